"""Two builds of the miniature world compared stage by stage (issue 11, point 4): the weights each stage
wrote and the figures world.json records, so "the world rebuilds" is a number anyone can recompute."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from samora_benchmarks.world import compare
from samora_kit.errors import SamoraError


def make_world(root, shift=0.0, loss=0.5):
    (root / "source_mae").mkdir(parents=True)
    (root / "stage1_acdc" / "experts").mkdir(parents=True)
    weights = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3)}
    save_file(weights, root / "source_mae" / "base.safetensors")
    save_file({"w": weights["w"] + shift, "b": weights["b"]}, root / "stage1_acdc" / "experts" / "image.safetensors")
    stages = {"mini_sam": {"held_out_after": {"scenes": {"box_miou": 0.65, "point_miou": 0.37}}},
              "teachers": {"mae": {"final_loss": loss, "sha256": "0" * 64}}}
    (root / "world.json").write_text(json.dumps({"stages": stages}))
    return root


def rows(table):
    return {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| weights") and not line.startswith("| figure")}


def test_each_weight_file_and_recorded_figure_is_compared(tmp_path):
    first = make_world(tmp_path / "a")
    second = make_world(tmp_path / "b", shift=1e-3, loss=0.25)
    table = rows(compare.compare_table(first, second))
    assert table["source_mae/base.safetensors"][0] == "0.00e+00"  # the same weights
    assert table["stage1_acdc/experts/image.safetensors"][0] == "1.00e-03"
    assert float(table["stage1_acdc/experts/image.safetensors"][1].rstrip(" |")) == pytest.approx(
        1e-3 * 6 ** 0.5 / (55 + 3) ** 0.5, rel=5e-3)  # printed to three digits
    assert table["mae teacher final loss"] == ["0.500", "0.250 |"]
    assert table["mini_sam box mIoU, scenes"] == ["0.650", "0.650 |"]


def test_a_world_without_its_record_is_named(tmp_path):
    first = make_world(tmp_path / "a")
    with pytest.raises(SamoraError, match=r"b/world.json does not exist"):
        compare.compare_table(first, tmp_path / "b")


def test_weights_holding_different_tensors_are_refused(tmp_path):
    first, second = make_world(tmp_path / "a"), make_world(tmp_path / "b")
    save_file({"other": torch.zeros(1)}, second / "source_mae" / "base.safetensors")
    with pytest.raises(SamoraError, match="hold different tensors"):
        compare.compare_table(first, second)


def add_run(root, folder, dice, target="hippocampus"):
    summary = root / f"fewshot-{target}" / folder / "eval" / "summary.json"
    summary.parent.mkdir(parents=True)
    summary.write_text(json.dumps({"transunet": {"mean": {"dice": dice}}}))


def test_fewshot_arms_of_both_builds_are_paired_by_draw(tmp_path):
    first, second = make_world(tmp_path / "a"), make_world(tmp_path / "b")
    for draw, (a, b) in enumerate([(0.50, 0.60), (0.40, 0.48), (0.70, 0.82)]):
        add_run(first, f"samora-k5-d{draw}", a)
        add_run(second, f"samora-k5-d{draw}", b)
    add_run(first, "samora-k5-d3", 0.10)  # a draw the second build has not run: left out of the pairing
    add_run(first, "unet-k5-d0", 0.80)  # an arm only the first build ran: no row
    add_run(second, "samed-k1-d0", 0.30)
    table = compare.fewshot_table(first, second)
    body = [line for line in table.splitlines() if line.startswith("| hippocampus")]
    assert len(body) == 1
    cells = [c.strip() for c in body[0].strip("|").split("|")]
    assert cells[:6] == ["hippocampus", "samora", "5", "3", "53.3", "63.3"]
    assert cells[6].startswith("+10.0 [")  # differences 10, 8, 12: mean 10, interval ±5.0 (t 4.30 × 2/√3)
    low, high = (float(x) for x in cells[6].split("[")[1].rstrip("]").split(","))
    assert low == pytest.approx(5.0, abs=0.06) and high == pytest.approx(15.0, abs=0.06)
    assert compare.fewshot_table(first, make_world(tmp_path / "c")) == ""  # nothing run in both
