"""Overlay PNGs for a visual check: the slice with the most foreground, fixed palette."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from ..weights.io import atomic_write  # noqa: E402

PALETTE = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
           "#bfef45", "#fabed4", "#469990", "#dcbeff"]


def save_overlay(image: np.ndarray, prediction: np.ndarray, path: Path, class_names: list[str],
                 truth: np.ndarray | None = None, title: str = "") -> Path:
    """image, prediction, truth: Z,H,W. Writes one PNG with image | truth | prediction."""
    reference = truth if truth is not None else prediction
    z = int(np.argmax((reference > 0).reshape(reference.shape[0], -1).sum(1)))
    panels = [("image", None)] + ([("ground truth", truth)] if truth is not None else []) \
        + [("prediction", prediction)]
    cmap = ListedColormap(PALETTE[:max(1, len(class_names))])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
    for ax, (name, labels) in zip(axes[0], panels):
        ax.imshow(image[z], cmap="gray", vmin=0, vmax=1)
        if labels is not None:
            masked = np.ma.masked_where(labels[z] == 0, labels[z] - 1)
            ax.imshow(masked, cmap=cmap, vmin=0, vmax=max(1, len(class_names)) - 1,
                      alpha=0.5, interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    fig.legend(handles=[Patch(color=PALETTE[i % len(PALETTE)], label=n) for i, n in enumerate(class_names)],
               loc="lower center", ncol=min(len(class_names), 6), frameon=False)
    fig.suptitle(f"{title} slice {z}")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path
