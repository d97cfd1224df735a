"""Where the encoder looks: Grad-CAM of the foreground logits on the encoder's output embedding,
for one slice, several runs side by side (the paper's Fig. 5 compares SAMed and SAMora); and how the
runs' logged diagnostics (metrics.jsonl keys `metric/part`, e.g. `fused_ratio/block03`) moved."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ..data.slices import slice_to_model_input  # noqa: E402
from ..devices import autocast, to_device  # noqa: E402
from ..interfaces import FeaturePyramid, embedding_of  # noqa: E402
from ..weights.io import atomic_write  # noqa: E402


def encoder_heatmap(model, image_hw: np.ndarray, precision: torch.dtype | None = None) -> np.ndarray:
    """Grad-CAM in [0, 1] at the slice's size: channel weights = mean gradient of the summed
    foreground logits w.r.t. the embedding; map = ReLU(weighted sum of channels). A decoder that reads
    only the finer maps of a feature pyramid (a U-Net's head) gets its Grad-CAM on the first map it reads.
    Runs where the model is, under autocast to `precision` (None: fp32)."""
    model.eval()
    device = next(model.parameters()).device
    x = to_device(slice_to_model_input(image_hw, model.image_size)[None], device)
    with autocast(device, precision):
        with torch.no_grad():  # the gradient starts at the encoder's output
            features = model.backbone(x)
        embedding = embedding_of(features).detach().requires_grad_(True)  # 1, C, g, g
        maps = [embedding]
        if isinstance(features, FeaturePyramid):
            maps += [level.detach().requires_grad_(True) for level in features.high_res]
            features = FeaturePyramid(embedding, tuple(maps[1:]))
        else:
            features = embedding
        logits = model.decoder(features)
    foreground = logits[:, 1:].float().sum()
    grads = torch.autograd.grad(foreground, maps, allow_unused=True)
    grad, read = next((g, m) for g, m in zip(grads, maps) if g is not None)
    cam = F.relu((grad.float().mean(dim=(2, 3), keepdim=True) * read.float()).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=image_hw.shape, mode="bilinear", align_corners=False)[0, 0].detach().cpu()
    return (cam / cam.max()).numpy() if cam.max() > 0 else cam.numpy()


def save_heatmaps(image_hw: np.ndarray, maps: dict[str, np.ndarray], path: Path, title: str) -> Path:
    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(3.2 * (len(maps) + 1), 3.6), squeeze=False)
    axes[0][0].imshow(image_hw, cmap="gray", vmin=0, vmax=1)
    axes[0][0].set_title("image")
    for ax, (name, heat) in zip(axes[0][1:], maps.items()):
        ax.imshow(image_hw, cmap="gray", vmin=0, vmax=1)
        ax.imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(name)
    for ax in axes[0]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path


def read_diagnostics(metrics: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """metric -> part -> [(step, value)] for every `metric/part` key in a run's metrics.jsonl."""
    series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    if not metrics.is_file():
        return series
    for line in metrics.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a kill mid-write
            continue
        for key, value in row.items():
            if "/" in key and isinstance(value, (int, float)):
                metric, part = key.split("/", 1)
                series.setdefault(metric, {}).setdefault(part, []).append((row.get("step", 0), value))
    return series


DIAGNOSTIC_LABELS = {"fused_ratio": "||fused term|| / ||frozen attention output||"}


def save_diagnostics_plot(runs: dict[str, dict], path: Path) -> Path:
    """One panel per (metric, run), a line per part over the steps; `runs`: name -> read_diagnostics()."""
    metrics = sorted({m for series in runs.values() for m in series})
    fig, axes = plt.subplots(len(metrics), len(runs), figsize=(4.2 * len(runs), 3.2 * len(metrics)),
                             squeeze=False, sharey="row")
    for row, metric in enumerate(metrics):
        for col, (name, series) in enumerate(runs.items()):
            ax = axes[row][col]
            for part, points in sorted(series.get(metric, {}).items()):
                steps, values = zip(*points)
                ax.plot(steps, values, marker=".", label=part)
            ax.set_title(f"{name}: {metric}")
            ax.set_xlabel("step")
            if col == 0:
                ax.set_ylabel(DIAGNOSTIC_LABELS.get(metric, metric), fontsize=8)
            if series.get(metric):
                ax.legend(fontsize=6)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path
