"""Paired comparison of two evaluated runs: per class, a Wilcoxon signed-rank test across the
test volumes both runs scored, with the mean difference (B − A)."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.markup import escape
from rich.table import Table
from scipy.stats import wilcoxon

from ..errors import SamoraError


@dataclass(frozen=True)
class PairedResult:
    cls: str
    metric: str
    n: int
    mean_a: float
    mean_b: float
    mean_difference: float  # B − A
    p_value: float


def read_per_case(run_dir: Path) -> list[dict]:
    path = run_dir / "eval" / "per_case.csv"
    if not path.is_file():
        raise SamoraError(f"{path}: missing; evaluate the run first (samora-kit evaluate {run_dir})")
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def paired_tests(run_a: Path, run_b: Path, policy: str = "transunet") -> list[PairedResult]:
    rows_a, rows_b = read_per_case(run_a), read_per_case(run_b)
    scores_a = {(r["case"], r["class"]): r for r in rows_a if r["policy"] == policy}
    scores_b = {(r["case"], r["class"]): r for r in rows_b if r["policy"] == policy}
    shared = sorted(scores_a.keys() & scores_b.keys())
    if not shared:
        raise SamoraError(f"{run_a} and {run_b} share no (case, class) scored under the {policy!r} policy; "
                          "compare runs evaluated on the same test cases")
    results = []
    for cls in dict.fromkeys(c for _, c in shared):
        keys = [k for k in shared if k[1] == cls]
        for metric in ("dice", "hd95"):
            a = np.array([float(scores_a[k][metric]) for k in keys])
            b = np.array([float(scores_b[k][metric]) for k in keys])
            keep = ~(np.isnan(a) | np.isnan(b))
            a, b = a[keep], b[keep]
            p = wilcoxon(b, a).pvalue if len(a) > 0 and np.any(a != b) else math.nan
            results.append(PairedResult(cls, metric, len(a), float(a.mean()) if len(a) else math.nan,
                                        float(b.mean()) if len(b) else math.nan,
                                        float((b - a).mean()) if len(a) else math.nan, float(p)))
    return results


def paired_table(results: list[PairedResult], name_a: str, name_b: str, policy: str) -> Table:
    table = Table(title=escape(f"{name_b} vs {name_a}, {policy} policy: Wilcoxon signed-rank across test volumes"))
    for column in ("class", "metric", "n", name_a, name_b, "mean B − A", "p"):
        table.add_column(escape(column), justify="left" if column in ("class", "metric") else "right", overflow="fold")
    for r in results:
        scale = 100 if r.metric == "dice" else 1
        table.add_row(escape(r.cls), "Dice %" if r.metric == "dice" else "HD95", str(r.n), f"{r.mean_a * scale:.2f}",
                      f"{r.mean_b * scale:.2f}", f"{r.mean_difference * scale:+.2f}",
                      "n/a" if math.isnan(r.p_value) else f"{r.p_value:.3g}")
    return table
