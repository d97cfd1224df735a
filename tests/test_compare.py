"""samora-kit compare: paired per-class tests between two evaluated runs."""

import csv
import math

import pytest
from scipy.stats import wilcoxon

from samora_kit.cli import main
from samora_kit.errors import SamoraError
from samora_kit.eval.compare import paired_tests


def _run(tmp_path, name, dice_by_case: dict[str, float], hd: float = 5.0):
    folder = tmp_path / name / "eval"
    folder.mkdir(parents=True)
    with open(folder / "per_case.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case", "policy", "class", "dice", "hd95", "status"])
        for case, dice in dice_by_case.items():
            for policy in ("transunet", "strict"):
                writer.writerow([case, policy, "liver", dice, hd, "ok"])
                writer.writerow([case, policy, "spleen", 0.5, "nan" if policy == "strict" else hd, "ok"])
    return tmp_path / name


def test_paired_test_pairs_cases_and_reports_mean_difference_and_wilcoxon_p(tmp_path):
    a = _run(tmp_path, "samed", {f"case{i}": 0.70 + 0.01 * i for i in range(8)})
    b = _run(tmp_path, "samora", {f"case{i}": 0.75 + 0.012 * i for i in range(8)} | {"extra": 0.1})
    results = {(r.cls, r.metric): r for r in paired_tests(a, b)}
    liver = results[("liver", "dice")]
    assert liver.n == 8  # the case only B scored is left out
    assert math.isclose(liver.mean_difference, sum(0.05 + 0.002 * i for i in range(8)) / 8)
    expected = wilcoxon([0.75 + 0.012 * i for i in range(8)], [0.70 + 0.01 * i for i in range(8)]).pvalue
    assert math.isclose(liver.p_value, expected)
    assert math.isnan(results[("spleen", "dice")].p_value)  # identical scores: no test


def test_compare_cli_prints_the_table_and_refuses_runs_without_shared_cases(tmp_path, capsys):
    a = _run(tmp_path, "a", {"c1": 0.5, "c2": 0.6, "c3": 0.7})
    b = _run(tmp_path, "b", {"c1": 0.6, "c2": 0.65, "c3": 0.9})
    assert main(["compare", str(a), str(b), "--policy", "strict"]) == 0
    assert "Wilcoxon" in capsys.readouterr().out
    c = _run(tmp_path, "c", {"other": 0.5})
    with pytest.raises(SamoraError, match="share no"):
        paired_tests(a, c)
    assert main(["compare", str(a), str(tmp_path / "missing")]) == 2
