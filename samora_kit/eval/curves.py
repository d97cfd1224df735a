"""Learning curves: validation Dice against epochs and against training minutes, read from the runs'
metrics.jsonl validation records (data.val); one line per run, or a group's mean with its min-max band."""

from __future__ import annotations

import glob
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..errors import SamoraError  # noqa: E402
from ..weights.io import atomic_write  # noqa: E402


@dataclass
class Curve:
    label: str
    epochs: np.ndarray   # epochs completed at each validation
    minutes: np.ndarray  # training wall time then (validation excluded)
    dice: np.ndarray     # mean Dice over classes (a group: the mean over its runs)
    low: np.ndarray | None = None   # a group's min and max over its runs
    high: np.ndarray | None = None
    runs: int = 1


def validation_records(run_dir: Path) -> list[dict]:
    """The run's validation records (lines with `val_dice`), by step; the last one per step wins."""
    metrics = run_dir / "metrics.jsonl"
    if not run_dir.is_dir():
        raise SamoraError(f"{run_dir}: no such run folder")
    if not metrics.is_file():
        raise SamoraError(f"{run_dir}: no metrics.jsonl; not a run folder, or its training never logged a step")
    by_step = {}
    for line in metrics.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a kill mid-write
            continue
        if isinstance(row, dict) and "val_dice" in row:
            by_step[row.get("step", 0)] = row
    if not by_step:
        raise SamoraError(f"{run_dir}: metrics.jsonl holds no validation records (val_dice); learning curves need a "
                          "segmentation run trained with data.val = {...} (the cases scored during training)")
    return [by_step[step] for step in sorted(by_step)]


def run_curve(run_dir: Path, label: str | None = None) -> Curve:
    records = validation_records(run_dir)
    return Curve(label or run_dir.name, np.array([r["epoch"] for r in records], dtype=float),
                 np.array([r["elapsed_s"] for r in records], dtype=float) / 60,
                 np.array([r["val_dice"] for r in records], dtype=float))


def group_curve(label: str, runs: str | Sequence[Path]) -> Curve:
    """The mean of the runs (a glob pattern, or the run folders themselves) at the epochs all of them were
    scored at, with its min-max band; the time axis is their mean training time at each such epoch."""
    if isinstance(runs, str):
        run_dirs, pattern = sorted(Path(p) for p in glob.glob(runs) if Path(p).is_dir()), runs
    else:
        run_dirs, pattern = sorted(map(Path, runs)), ", ".join(map(str, runs))
    if not run_dirs:
        raise SamoraError(f"--group {label}={pattern}: no run folder matches")
    curves = [run_curve(d) for d in run_dirs]
    common = sorted(set.intersection(*(set(c.epochs.tolist()) for c in curves)))
    if not common:
        raise SamoraError(f"--group {label}={pattern}: its {len(curves)} runs share no validated epoch "
                          f"({', '.join(d.name for d in run_dirs)})")

    def at_common(curve: Curve, values: np.ndarray) -> np.ndarray:
        index = {e: i for i, e in enumerate(curve.epochs.tolist())}
        return np.array([values[index[e]] for e in common])

    dice = np.stack([at_common(c, c.dice) for c in curves])        # runs, epochs
    minutes = np.stack([at_common(c, c.minutes) for c in curves])  # runs, epochs
    return Curve(label, np.array(common), minutes.mean(0), dice.mean(0), dice.min(0), dice.max(0), len(curves))


def save_curves_plot(curves: list[Curve], path: Path) -> Path:
    """Two panels side by side: Dice % against epochs and against training minutes; written atomically."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for n, curve in enumerate(curves):
        colour = f"C{n % 10}"
        label = curve.label if curve.runs == 1 else f"{curve.label} (mean of {curve.runs}, min-max)"
        for ax, x in zip(axes, (curve.epochs, curve.minutes)):
            ax.plot(x, 100 * curve.dice, marker=".", color=colour, label=label)
            if curve.low is not None:
                ax.fill_between(x, 100 * curve.low, 100 * curve.high, color=colour, alpha=0.2, linewidth=0)
    axes[0].set_xlabel("epoch")
    axes[1].set_xlabel("training wall time (min, validation excluded)")
    axes[0].set_ylabel("validation Dice % (mean over classes)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("validation Dice during training (TransUNet policy)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path
