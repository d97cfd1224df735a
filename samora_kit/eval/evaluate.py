"""Score every test volume and class under each empty-mask policy; write the reports."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..weights.io import atomic_write_text
from .inference import predict_volume
from .metrics import score_volume, summarise


def evaluate(model, adapter, policies: list[str], out_dir: Path, batch_size: int = 16,
             device: torch.device = torch.device("cpu"), overlays: int = 4,
             console: Console | None = None, precision: torch.dtype | None = None) -> dict:
    """Returns {policy: summary}; writes per_case.csv, summary.json and overlays/ under out_dir. The model
    runs on `device` (where it is) under autocast to `precision` (None: fp32)."""
    from .overlay import save_overlay  # matplotlib is slow to import: `validate` imports this module

    console = console or Console()
    names = adapter.class_names
    per_case: dict[str, dict] = {p: {} for p in policies}
    rows = []
    cases = adapter.cases("test")
    with console.status(f"evaluating {len(cases)} test volumes") as status:
        for i, case_id in enumerate(cases):
            status.update(f"evaluating {escape(case_id)} ({i + 1}/{len(cases)})")
            volume = adapter.load_case(case_id)
            prediction = predict_volume(model, volume.image, batch_size, device, precision)
            for policy in policies:
                scores = score_volume(prediction, volume.label, adapter.num_classes, policy, volume.spacing)
                per_case[policy][case_id] = scores
                rows += [[case_id, policy, names[c], s.dice, s.hd95, s.status] for c, s in enumerate(scores)]
            if i < overlays:
                save_overlay(volume.image, prediction, out_dir / "overlays" / f"{case_id}.png", names,
                             truth=volume.label, title=case_id)
    summary = {p: summarise(per_case[p], names, p) for p in policies}
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["case", "policy", "class", "dice", "hd95", "status"])
    writer.writerows(rows)
    atomic_write_text(out_dir / "per_case.csv", buffer.getvalue())
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def summary_table(summary: dict, class_names: list[str], title: str = "test set") -> Table:
    """One row per class; Dice and HD95 under each policy, mean ± std over volumes."""
    table = Table(title=escape(title))  # run names and class names are user text, not markup
    table.add_column("class")
    for policy, s in summary.items():
        unit = "vox" if policy == "transunet" else "mm"
        table.add_column(f"Dice % ({policy})", justify="right")
        table.add_column(f"HD95 {unit} ({policy})", justify="right")
    for name in class_names + ["mean"]:
        cells = []
        for s in summary.values():
            entry = s["mean"] if name == "mean" else s["classes"][name]
            cells += [_pm(entry, "dice", 100), _pm(entry, "hd95", 1)]
        table.add_row(escape(name), *cells)
    table.caption = " ".join(s["policy_description"] for s in summary.values())
    return table


def comparison_table(summaries: dict[str, dict], class_names: list[str], policy: str) -> Table:
    """Models side by side under one policy; each cell is Dice % | HD95, mean ± std over volumes."""
    unit = "vox" if policy == "transunet" else "mm"
    table = Table(title=f"test set, {policy} policy: Dice % | HD95 {unit}")
    table.add_column("class")
    for name in summaries:
        table.add_column(escape(name), justify="right", overflow="fold")
    for cls in class_names + ["mean"]:
        cells = []
        for s in summaries.values():
            entry = s[policy]["mean"] if cls == "mean" else s[policy]["classes"][cls]
            cells.append(f"{_pm(entry, 'dice', 100)} | {_pm(entry, 'hd95', 1)}")
        table.add_row(escape(cls), *cells)
    return table


def _pm(entry: dict, metric: str, scale: float) -> str:
    mean = entry.get(f"{metric}_mean", entry.get(metric))
    std = entry.get(f"{metric}_std")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return f"{mean * scale:.2f}" + (f" ± {std * scale:.2f}" if std is not None and not math.isnan(std) else "")
