"""A run's schedule: warm-up as steps or a fraction, refused when it outlasts the run, checked for every
shipped recipe as it is; each trainable part with its own learning rate."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import pytest

from samora_kit.cli import main
from samora_kit.errors import SamoraError
from samora_kit.plugins import default_registry
from samora_kit.recipe import load_recipe
from samora_kit.runner import run
from samora_kit.train.losses import DiceCELoss
from samora_kit.train.model import SegmentationObjective, build_model
from samora_kit.train.optim import FUSER_LR_FACTOR, build_optimizer
from samora_kit.train.schedule import run_length
from samora_kit.weights.io import load_weights

from .synthetic import tiny_recipe, write_decathlon

REPO = Path(__file__).resolve().parents[1]
# Training slices of the paper's settings, the fewest the published splits give (reference/
# anchor-implementations.md): Synapse train.txt 2211 slices, the 10 % list 220, LA's 4 scans 224 and
# PROMISE12's 3 scans 58 foreground slices. Fewer slices make a shorter run, so a warm-up that fits
# these fits the real data too.
PAPER_SLICES = {"": 2211, "synapse_10pct": 220, "la_5pct": 224, "promise12_7pct": 58}
MODELS = ["samed", "samora", "h_sam", "h_samora", "samed2", "samora2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_decathlon(tmp_path_factory.mktemp("schedule") / "data", n_cases=4)


def _recipe(tmp_path: Path, data: Path, **train) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(tiny_recipe(data, tmp_path / "run", ["case_000", "case_001"], ["case_002"], **train))
    return path


@pytest.mark.parametrize("setting", list(PAPER_SLICES))
@pytest.mark.parametrize("model", MODELS)
def test_every_paper_recipe_leaves_warm_up(setting, model):
    recipe = load_recipe(REPO / "recipes" / setting / f"{model}.toml", default_registry())  # as shipped
    length = run_length(recipe.train, PAPER_SLICES[setting])
    assert 0 < length.warmup < length.total


def test_warm_up_takes_steps_or_a_fraction_of_the_run(tmp_path, data):
    registry = default_registry()
    recipe = load_recipe(_recipe(tmp_path, data), registry, ["train.warmup=0.25", "train.epochs=10"])
    assert run_length(recipe.train, 40).total == 100 and run_length(recipe.train, 40).warmup == 25
    recipe = load_recipe(_recipe(tmp_path, data), registry, ["train.warmup=30", "train.epochs=10"])
    assert run_length(recipe.train, 40).warmup == 30
    assert run_length(recipe.train, 40).describe() == \
        "40 training slices, 10 steps per epoch, 100 steps, warm-up 30 steps"
    with pytest.raises(SamoraError, match=r"train\.warmup"):
        load_recipe(_recipe(tmp_path, data), registry, ["train.warmup=1.5"])
    with pytest.raises(SamoraError, match=r"\[0, 1\)"):
        load_recipe(_recipe(tmp_path, data), registry, ["train.warmup=1.5"])
    with pytest.raises(SamoraError, match=r"0 or more"):
        load_recipe(_recipe(tmp_path, data), registry, ["train.warmup=-3"])


def test_validate_refuses_a_warm_up_that_outlasts_the_run_naming_both_numbers(tmp_path, data, capsys):
    recipe = _recipe(tmp_path, data, epochs=2, warmup=40)
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    # 2 cases x 8 slices of the synthetic volumes, batch 4: 4 steps per epoch, 8 steps in all
    assert "train.warmup = 40 is 40 warm-up steps, not fewer than the run's 8 steps" in err
    assert "2 epochs x 4 steps of 4 over 16 training slices" in err
    with pytest.raises(SamoraError, match="not fewer than the run's 8 steps"):
        run(recipe, [], False, ["test"], show_progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before anything trained

    assert main(["validate", str(recipe), "train.warmup=0.25"]) == 0
    assert "# training: 16 training slices, 4 steps per epoch, 8 steps, warm-up 2 steps" in capsys.readouterr().out


def test_validate_says_when_it_cannot_read_the_data_to_check_the_length(tmp_path, data, capsys):
    (tmp_path / "not_yet_downloaded").mkdir()  # the folder is there, its dataset.json is not (yet)
    assert main(["validate", str(_recipe(tmp_path, data)), f"data.root={tmp_path / 'not_yet_downloaded'}"]) == 0
    assert "# run length not checked, the training data could not be read" in capsys.readouterr().out


def _samora_objective(tmp_path: Path, data: Path, *overrides: str):
    registry = default_registry()
    recipe = load_recipe(_recipe(tmp_path, data), registry, [
        'backbone.experts={ names = ["image", "pixel"] }', 'fuser={ name = "hl_attn", order = ["pixel", "image"], '
        'width = 16, heads = 2 }', *overrides])
    model = build_model(recipe, registry, num_classes=2)
    return recipe, model, SegmentationObjective(model, DiceCELoss(2))


def test_each_trainable_part_has_its_own_learning_rate(tmp_path, data):
    recipe, model, objective = _samora_objective(tmp_path, data)
    groups = {g["name"]: g for g in build_optimizer(objective, recipe.train).param_groups}
    assert set(groups) == {"main", "fuser"}
    assert groups["main"]["base_lr"] == recipe.train.lr == 0.005
    assert groups["fuser"]["base_lr"] == pytest.approx(FUSER_LR_FACTOR * 0.005)
    assert {id(p) for p in groups["fuser"]["params"]} == {id(p) for f in model.backbone.fusers().values()
                                                          for p in f.parameters()}
    assert {id(p) for p in groups["main"]["params"]} == {id(p) for p in model.decoder.parameters() if p.requires_grad}

    recipe, _, objective = _samora_objective(tmp_path, data, "train.fuser_lr=0.0007")
    assert {g["name"]: g["base_lr"] for g in build_optimizer(objective, recipe.train).param_groups}["fuser"] == 0.0007

    registry = default_registry()  # SAMed: its LoRA trains at train.lora_lr (default train.lr)
    samed = load_recipe(_recipe(tmp_path, data), registry, ["train.lora_lr=0.002"])
    model = build_model(samed, registry, num_classes=2)
    groups = {g["name"]: g for g in build_optimizer(SegmentationObjective(model, DiceCELoss(2)), samed.train).param_groups}
    assert set(groups) == {"main", "lora"} and groups["lora"]["base_lr"] == 0.002
    assert all(".lora_" in n for n, p in model.named_parameters() if any(p is q for q in groups["lora"]["params"]))


def test_every_group_lr_is_logged_and_follows_the_schedule(tmp_path, data):
    recipe = _recipe(tmp_path, data, epochs=3, warmup=0.25)
    run(recipe, ['backbone.experts={ names = ["image", "pixel"] }', "train.fuser_lr=0.001",
                 'fuser={ name = "lac" }', "backbone.lora.blocks=[1, 3]"], False, ["test"], show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    for row in rows:  # one schedule shape, each group at its own peak
        assert row["lr_fuser"] == pytest.approx(row["lr"] * 0.001 / 0.005)
    assert [round(r["lr"] / 0.005, 4) for r in rows[:4]] == [0.3333, 0.6667, 1.0, 1.0]  # 3 warm-up steps


def test_schedules_warm_up_then_decay_as_named():
    from samora_kit.train.schedule import learning_rate

    for schedule in ("poly", "cosine", "constant"):
        assert [learning_rate(schedule, s, 1.0, 4, 20) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert learning_rate("constant", 19, 1.0, 4, 20) == 1.0
    assert learning_rate("cosine", 4, 1.0, 4, 20) == 1.0 and learning_rate("cosine", 12, 1.0, 4, 20) == pytest.approx(0.5)
    assert learning_rate("cosine", 20, 1.0, 4, 20) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate("poly", 12, 1.0, 4, 20) == pytest.approx((1 - 8 / 20) ** 0.9)


@pytest.mark.parametrize("knobs", [["train.optimizer=sgd", "train.schedule=cosine"],
                                   ["train.grad_clip=0.5", "train.schedule=constant"],
                                   ["train.amp=fp16", "train.grad_clip=1.0"]])
def test_optimizer_schedule_clipping_and_precision_are_recipe_knobs(tmp_path, data, knobs):
    recipe = _recipe(tmp_path, data, epochs=2, warmup=0.25)
    run(recipe, [*knobs, "eval.overlays=0"], False, ["test"], show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(math.isfinite(r["loss"]) for r in rows)
    if "train.schedule=constant" in knobs:
        assert [r["lr"] for r in rows[2:]] == [0.005] * 6
    if "train.schedule=cosine" in knobs:
        assert rows[-1]["lr"] < rows[3]["lr"] < 0.005
    if any(k.startswith("train.grad_clip") for k in knobs):
        assert all(r["grad_norm"] > 0 for r in rows)  # the norm before clipping
    resolved = tomllib.loads((tmp_path / "run" / "recipe.resolved.toml").read_text())["train"]
    for knob in knobs:
        key, value = knob.removeprefix("train.").split("=")
        assert str(resolved[key]) == value
    state = load_weights(tmp_path / "run" / "checkpoints" / "last.safetensors")[0]
    moments = {key.rsplit("/", 1)[1] for key in state if key.startswith("optim/")}
    assert moments == ({"momentum_buffer"} if "train.optimizer=sgd" in knobs else {"step", "exp_avg", "exp_avg_sq"})
