"""The few-shot benchmark compares paired arms: one draw, one decoder initialisation."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace
from pathlib import Path

import pytest
import torch

from samora_kit.plugins import default_registry
from samora_kit.recipe import dump_recipe, load_recipe
from samora_kit.flows.common import seed_everything
from samora_kit.train.model import build_model
from samora_kit_plugins.sam_weights import save_sam_layout
from samora_kit_plugins.sam import SamBackboneConfig, build_sam_backbone

from samora_benchmarks.world.build import SCALES, stage1_overrides

from tests.conftest import shared_dataset

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fewshot():
    from samora_benchmarks import fewshot

    return fewshot


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny self-pre-trained base in SAM's layout, standing in for runs/base-hippocampus."""
    torch.manual_seed(0)
    sam = build_sam_backbone(SamBackboneConfig(variant="tiny", image_size=64))
    path, _ = save_sam_layout(tmp_path_factory.mktemp("base") / "base.safetensors",
                              sam.encoder_state_in_official_layout(),
                              {"format": "sam-encoder", "origin": "self-pre-trained", "variant": "tiny"})
    return path


def _decoder(fewshot, arm: str, draw: int, base: Path, tmp_path: Path, recipes: str = "recipes/fewshot"
             ) -> dict[str, torch.Tensor]:
    """The decoder an arm's run of `draw` starts from, built as `samora-kit run` builds it."""
    registry = default_registry()
    where = SimpleNamespace(recipes=recipes, dataset="hippocampus")
    recipe_arm, extra = fewshot.ARMS[arm][0], fewshot.arm_extra(arm, where)
    overrides = [*fewshot.arm_overrides(extra, 3, draw, tmp_path / arm), f"backbone.checkpoint={base}"]
    recipe = load_recipe(REPO / fewshot._recipe(where, recipe_arm), registry, overrides)
    seed_everything(recipe.run.seed)
    return build_model(recipe, registry, num_classes=2).decoder.state_dict()


def _same_start(decoders: dict[str, dict[str, torch.Tensor]], family: list[str]) -> None:
    first = decoders[family[0]]
    for arm in family[1:]:
        assert decoders[arm].keys() == first.keys()
        different = [k for k in first if not torch.equal(decoders[arm][k], first[k])]
        assert not different, f"{arm} starts from another decoder than {family[0]}: {different[:3]}"


def test_every_arm_of_a_draw_starts_from_the_same_decoder(fewshot, base, tmp_path):
    arms = ["samed", "samora", "decoder_only", "decoder_only_short", "h_sam", "h_samora"]
    decoders = {arm: _decoder(fewshot, arm, 1, base, tmp_path) for arm in arms}
    for family in (["samed", "samora", "decoder_only", "decoder_only_short"], ["h_sam", "h_samora"]):
        _same_start(decoders, family)
    other_draw = _decoder(fewshot, "samed", 2, base, tmp_path)  # each draw has its own initialisation
    assert any(not torch.equal(other_draw[k], decoders["samed"][k]) for k in other_draw)


def test_paired_difference_is_the_mean_of_per_draw_differences_with_a_t_interval(fewshot):
    mean, low, high = fewshot.paired_difference([0.5, 0.6, 0.7], [0.4, 0.4, 0.4])
    assert mean == pytest.approx(0.2)
    half = 4.303 * 0.1 / math.sqrt(3)  # t(0.975, 2) x sd of (0.1, 0.2, 0.3) / sqrt(3)
    assert (low, high) == pytest.approx((0.2 - half, 0.2 + half), abs=1e-4)  # t rounded to 4 digits
    assert math.isnan(fewshot.paired_difference([0.5], [0.4])[1])


def test_a_difference_over_one_draw_is_shown_without_an_interval(fewshot):
    assert fewshot.shown_difference(*fewshot.paired_difference([2.0], [0.5])) == "+1.50 [one draw: no interval]"
    assert fewshot.shown_difference(1.0, -0.5, 2.25) == "+1.00 [-0.50, +2.25]"


@pytest.fixture(scope="module")
def mini_sam_file(tmp_path_factory) -> Path:
    """A tiny mini-SAM at the world's 128 px, exported as an official file and imported."""
    from samora_benchmarks.world import mini_sam

    torch.manual_seed(0)
    encoder = build_sam_backbone(SamBackboneConfig(variant="tiny", image_size=128))
    folder = tmp_path_factory.mktemp("mini_sam")
    encoder_file, _ = save_sam_layout(folder / "encoder.safetensors", encoder.encoder_state_in_official_layout(),
                                      {"format": "sam-encoder", "origin": "test", "variant": "tiny",
                                       "source_image_size": 128})
    model = mini_sam.build_promptable_sam(encoder_file, "tiny", 128, corrections=0)
    mini_sam.export_official(model, folder / mini_sam.PTH)
    return mini_sam.import_official(folder / mini_sam.PTH, folder / mini_sam.SAFETENSORS, "tiny")[0]


def test_the_worlds_sam_arms_of_a_draw_start_from_the_same_decoder_loaded_from_mini_sam(
        fewshot, mini_sam_file, tmp_path):
    arms = ["samed", "samed_short", "samora", "samora_full", "decoder_only", "decoder_only_short"]
    decoders = {arm: _decoder(fewshot, arm, 0, mini_sam_file, tmp_path, "benchmarks/recipes/world") for arm in arms}
    _same_start(decoders, arms)
    kept = torch.load(mini_sam_file.with_suffix(".pth"), weights_only=True)
    transformer = [k for k in decoders["samed"] if k.startswith("mask_decoder.transformer.")]
    assert transformer and all(torch.equal(decoders["samed"][k], kept[k]) for k in transformer)


@pytest.mark.parametrize("dataset, frames", [("hippocampus", 1), ("acdc", 2)])
def test_validation_subjects_are_support_pool_subjects_outside_the_draw_and_never_test(
        fewshot, dataset, frames):
    shared_dataset({"hippocampus": "msd_hippocampus", "acdc": "acdc"}[dataset])
    where = SimpleNamespace(recipes="benchmarks/recipes/world", dataset=dataset)
    recipe = load_recipe(REPO / fewshot._recipe(where, "samed"), default_registry(),
                         ["data.train.key=support_sets.k3.2"])
    overrides = fewshot.validation_overrides(recipe, 3, 2, recipe.train.epochs)
    cases = json.loads(overrides[0].split("=", 1)[1])
    assert overrides[1] == f"validation.every={recipe.train.epochs // fewshot.CURVE_POINTS}"
    split = json.loads(Path(recipe.data.train.split_file).read_text())
    subjects = {case.split("_frame")[0] for case in cases}
    assert len(cases) == frames * fewshot.VALIDATION_SUBJECTS == frames * len(subjects)
    assert subjects <= set(split["support_pool"]) and not subjects & set(split["support_sets"]["k3"][2])
    assert not subjects & set(split["test"])
    checked = load_recipe(REPO / fewshot._recipe(where, "samed"), default_registry(), overrides)
    assert checked.data.val.cases == cases


def test_the_worlds_table5_rows_keep_one_expert_taught_as_their_label_says(fewshot):
    where = SimpleNamespace(world=True, foundation=None, recipes="benchmarks/recipes/world", dataset="hippocampus",
                            ablation_epochs=30)
    registry = default_registry()
    rows = fewshot.ablations(where)
    assert set(fewshot.TABLE4) | {fewshot.ABLATION_REFERENCE} < set(rows)
    expected_teacher = {"T-S w/ CPT": True, "T-S w/o CPT": False, "scratch": None}  # cpt, None: no teacher
    for label, extra in rows.items():
        recipe = load_recipe(REPO / fewshot._recipe(where, "samora"), registry, extra)
        assert recipe.train.epochs == 30
        if " expert only, " not in label:
            assert recipe.backbone.experts.names == ["image", "patch", "pixel"], label
            continue
        expert, how = label.split(" expert only, ")
        assert recipe.backbone.experts.names == [expert] and recipe.fuser.name == "sum", label
        stage1 = load_recipe(recipe.pretrain.recipe, registry)
        teacher = next(e for e in stage1.experts if e.name == expert).teacher
        assert (None if teacher is None else teacher.cpt) == (None if expert == "pixel" else expected_teacher[how]), label
    folders = {fewshot._ablation_folder(label, where) for label in rows}
    assert len(folders) == len(rows)  # every row its own runs


def test_the_arms_of_another_world_build_read_its_mini_sam_and_its_stage1_experts(fewshot, tmp_path):
    """--world-root: the SAM arms load that build's mini-SAM, SAMora's experts come from its stage-1 run
    (the recipe that run saved, naming the build's files), U-Net takes nothing from it; a build without
    the files is refused, naming them and the command that builds it."""
    root = tmp_path / "world-b"
    with pytest.raises(SystemExit, match=r"mini_sam\.safetensors.*benchmarks\.world\.build --root"):
        fewshot.world_build_overrides(root, "hippocampus", "benchmarks/recipes/world/hippocampus_samed.toml")
    (root / "mini_sam").mkdir(parents=True)
    (root / "mini_sam" / "mini_sam.safetensors").write_bytes(b"")
    registry = default_registry()
    stage1 = load_recipe(REPO / "benchmarks" / "recipes" / "world" / "stage1_hippocampus.toml", registry,
                         stage1_overrides(root, SCALES["cpu"], "hippocampus"))
    (root / "stage1_hippocampus").mkdir()
    (root / "stage1_hippocampus" / "recipe.resolved.toml").write_text(dump_recipe(stage1))

    arms = {arm: fewshot.world_build_overrides(root, "hippocampus", f"benchmarks/recipes/world/hippocampus_{arm}.toml")
            for arm in ("samed", "samora", "unet")}
    assert arms["unet"] == []
    samora = load_recipe(REPO / "benchmarks" / "recipes" / "world" / "hippocampus_samora.toml", registry, arms["samora"])
    assert samora.backbone.checkpoint == root / "mini_sam" / "mini_sam.safetensors"
    experts = load_recipe(samora.pretrain.recipe, registry)
    assert experts.run.output_dir == root / "stage1_hippocampus"
    assert experts.backbone.checkpoint == samora.backbone.checkpoint
    assert experts.experts[1].teacher.checkpoint == root / "teachers" / "mae_mini.pth"
    samed = load_recipe(REPO / "benchmarks" / "recipes" / "world" / "hippocampus_samed.toml", registry, arms["samed"])
    assert samed.backbone.checkpoint == samora.backbone.checkpoint and samed.pretrain is None


def _validated(folder: Path, points: list[tuple[float, float]]) -> None:
    """A run folder whose metrics.jsonl holds validation records (training seconds, val Dice)."""
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(
        json.dumps({"step": 10 * (i + 1), "epoch": i + 1, "val_dice": dice, "elapsed_s": seconds}) + "\n"
        for i, (seconds, dice) in enumerate(points)))


def test_time_to_accuracy_is_the_arms_seconds_to_samed_final_dice_over_samed_seconds(fewshot, tmp_path):
    _validated(tmp_path / "samed-k3-d0", [(100, 0.5), (200, 0.8), (400, 0.8)])  # at its final Dice by 200 / 400
    _validated(tmp_path / "samora_full-k3-d0", [(50, 0.6), (120, 0.81), (500, 0.82)])  # 120 / 400
    _validated(tmp_path / "samed-k3-d1", [(100, 0.6), (300, 0.9)])
    _validated(tmp_path / "samora_full-k3-d1", [(100, 0.5), (300, 0.85)])  # never reaches 0.9
    args = SimpleNamespace(runs=tmp_path, ks=[3], draws=2, arms=["samed", "samora_full"])
    table = fewshot._time_to_accuracy(args)
    assert "| samora, SAMed's epochs | 3 | 1 of 2 | 0.30 [0.30, 0.30] |" in table
    assert "| samed, its own curve (control) | 3 | 2 of 2 | 0.75 [0.50, 1.00] |" in table  # d1: 300 / 300
    args.arms = ["samed"]
    assert "| samora" not in fewshot._time_to_accuracy(args)


def test_the_curves_show_the_tables_draws_not_a_later_draw_still_running(fewshot, tmp_path, monkeypatch):
    import samora_kit.api

    _validated(tmp_path / "samed-k3-d0", [(100, 0.5), (200, 0.8)])
    _validated(tmp_path / "samed-k3-d1", [(100, 0.1)])  # the next draw, one scoring in
    drawn = []
    monkeypatch.setattr(samora_kit.api, "save_curves_plot", lambda curves, path: drawn.extend(curves), raising=False)
    args = SimpleNamespace(runs=tmp_path, ks=[3], draws=1, arms=["samed", "samora"], no_docs=True,
                           foundation="litemedsam", dataset="hippocampus")
    assert "litemedsam-hippocampus-k3-curves.png" in fewshot._curves(args)
    assert [(c.label, c.runs, c.dice.tolist()) for c in drawn] == [("samed", 1, [0.5, 0.8])]


def test_the_budget_is_where_the_best_validation_dice_stops_gaining_half_a_point():
    from samora_benchmarks import choose_budget as choose

    epochs = [10, 20, 30, 40, 50]
    assert choose.plateau(epochs, [70.0, 78.0, 80.0, 80.3, 80.1], 0.5) == 30  # 80.3 is within 0.5 of 80.0
    assert choose.plateau(epochs, [70.0, 78.0, 80.0, 81.0, 79.0], 0.5) == 40
    assert choose.plateau(epochs, [80.0, 79.0, 78.0, 77.0, 76.0], 0.5) == 10  # never better than at first


def test_the_budget_check_smooths_with_a_centred_moving_average():
    from samora_benchmarks import choose_budget as choose

    assert choose.moving_average([70.0, 76.0, 79.0, 77.0, 81.0], 3) == pytest.approx([73.0, 75.0, 232 / 3, 79.0, 79.0])
    lucky = [76.0, 78.0, 78.0, 78.0, 81.0, 77.0, 78.0]  # one lucky scoring at epoch 50
    epochs = [10, 20, 30, 40, 50, 60, 70]
    assert choose.plateau(epochs, lucky, 0.5) == 50
    assert choose.plateau(epochs, choose.moving_average(lucky, 3), 0.5) == 40  # (78 + 78 + 81) / 3 is the top
