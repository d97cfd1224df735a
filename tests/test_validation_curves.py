"""Validation during training (data.val, [validation]) and the learning curves drawn from it
(`samora-kit plot curves`)."""

from __future__ import annotations

import io
import json
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from samora_kit.cli import main
from samora_kit.errors import RecipeError
from samora_kit.plugins import default_registry
from samora_kit.recipe import load_recipe
from samora_kit.runner import run
from samora_kit.train import loop
from samora_kit.weights.io import load_weights

from .synthetic import tiny_recipe, write_decathlon

VAL = 'data.val.cases=["case_003", "case_004"]'
QUICK = ["eval.overlays=0", 'eval.policies=["transunet"]']
RECORD_KEYS = {"step", "epoch", "val_dice", "val_dice_shell", "val_dice_core", "elapsed_s", "val_s"}


@pytest.fixture
def recipe(tmp_path):
    """A tiny SAMed recipe on 5 synthetic cases: 1 train (8 slices, 2 steps per epoch), 1 test."""
    data = write_decathlon(tmp_path / "data", n_cases=5)

    def make(name: str, **train) -> Path:
        path = tmp_path / f"{name}.toml"
        path.write_text(tiny_recipe(data, tmp_path / name, ["case_000"], ["case_002"], **train))
        return path
    return make


def _train(path: Path, *overrides: str, step_callbacks=()) -> Path:
    run(path, [*QUICK, *overrides], False, ["samora-kit", "run", str(path)], Console(file=io.StringIO()),
        show_progress=False, step_callbacks=step_callbacks)
    return path.with_suffix("")


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_validation_records_appear_every_few_epochs_and_after_the_last(recipe, capsys):
    run_dir = _train(recipe("every2", epochs=3), VAL, "validation.every=2")
    rows = _metrics(run_dir)
    records = [r for r in rows if "val_dice" in r]
    assert [(r["epoch"], r["step"]) for r in records] == [(2, 4), (3, 6)]  # every 2nd epoch, and the last
    for r in records:
        assert set(r) == RECORD_KEYS
        assert 0.0 <= r["val_dice"] <= 1.0 and r["val_s"] > 0
        assert r["val_dice"] == pytest.approx((r["val_dice_shell"] + r["val_dice_core"]) / 2)
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 6 and all("elapsed_s" in r for r in steps)  # steps against wall time
    times = [r["elapsed_s"] for r in rows]
    assert times == sorted(times)
    code, out, err = _cli(capsys, "plot", "curves", run_dir, "--out", run_dir / "curves.png")
    assert code == 0, err
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_validation_seconds_are_not_training_time():
    from samora_kit.train.distributed import DistContext

    class Slow:
        every = 1

        def __call__(self):
            time.sleep(0.3)
            return {"val_dice": 0.5}

    clock = loop.TrainingClock(before=10.0)  # a resumed run's past goes on
    record = loop.validate(Slow(), torch.nn.Linear(1, 1), clock, DistContext(), 1.5)
    assert record["epoch"] == 1.5 and record["val_dice"] == 0.5
    assert record["val_s"] >= 0.3 and 10.0 <= record["elapsed_s"] < 10.2
    assert clock.elapsed() - record["elapsed_s"] < 0.1  # the clock goes on from where training stood


@pytest.mark.slow
def test_a_run_with_validation_trains_exactly_the_weights_of_one_without(recipe, monkeypatch):
    """The loop restores the model's modes and every random generator after validating; to prove it,
    validation here draws from each generator (as a stochastic model in eval mode might)."""
    from samora_kit.eval import validation

    predict = validation.predict_volume

    def drawing(*args, **kwargs):
        torch.rand(3), np.random.rand(3), random.random()
        return predict(*args, **kwargs)

    monkeypatch.setattr(validation, "predict_volume", drawing)
    states: dict[str, list] = {}

    def generators(name):  # the global generators after every step, validation included
        return lambda step: states.setdefault(name, []).append(
            (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()))

    for name, extra in (("plain", []), ("validated", [VAL])):
        _train(recipe(name, epochs=2), *extra, step_callbacks=[generators(name)])
    plain, validated = (load_weights(recipe(n).with_suffix("") / "weights.safetensors")[0]
                        for n in ("plain", "validated"))
    assert plain.keys() == validated.keys()
    for key in plain:
        assert torch.equal(plain[key], validated[key]), key
    assert len(states["plain"]) == len(states["validated"]) == 4
    for a, b in zip(states["plain"], states["validated"]):
        assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    losses = {n: [r["loss"] for r in _metrics(recipe(n).with_suffix("")) if "loss" in r]
              for n in ("plain", "validated")}
    assert losses["plain"] == losses["validated"]
    assert sum("val_dice" in r for r in _metrics(recipe("validated").with_suffix(""))) == 2


def test_validation_cases_that_are_test_cases_are_refused(recipe, capsys):
    path = recipe("leak", epochs=1)
    leak = 'data.val.cases=["case_003", "case_002"]'  # case_002 is the test case
    code, out, err = _cli(capsys, "validate", path, leak)
    assert code == 2
    assert "data.val" in err and "case_002" in err and "test" in err and "case_003" not in err.split("holds")[1]
    code, out, err = _cli(capsys, "run", path, leak, *QUICK)
    assert code == 2
    assert "case_002" in err and "validation must never score test subjects" in err
    assert not (path.with_suffix("") / "checkpoints").exists()  # refused before anything trained


def test_a_validation_section_without_validation_cases_is_a_recipe_error(recipe):
    with pytest.raises(RecipeError, match=r"\[validation\] is set but data.val is not"):
        load_recipe(recipe("nothing"), default_registry(), ["validation.every=2"])
    parsed = load_recipe(recipe("cases"), default_registry(), [VAL, "validation.every=3"])
    assert parsed.data.val.cases == ["case_003", "case_004"] and parsed.validation.every == 3


def _fake_run(folder: Path, dice: list[float], minutes_per_epoch: float = 1.0, validated: bool = True) -> Path:
    """A run folder whose metrics.jsonl holds training lines and (optionally) validation records."""
    folder.mkdir(parents=True)
    rows = []
    for epoch, value in enumerate(dice, start=1):
        rows.append({"step": 4 * epoch, "loss": 1 - value, "epoch": epoch - 1, "elapsed_s": 60 * minutes_per_epoch * epoch})
        if validated:
            rows.append({"step": 4 * epoch, "epoch": epoch, "val_dice": value, "val_dice_a": value,
                         "elapsed_s": 60 * minutes_per_epoch * epoch, "val_s": 1.0})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_plot_curves_draws_runs_and_group_bands(tmp_path, capsys):
    fast = _fake_run(tmp_path / "samora", [0.5, 0.7, 0.8])
    for seed, shift in enumerate((0.0, 0.05, 0.1)):
        _fake_run(tmp_path / "fewshot" / f"samed-k3-d{seed}", [0.1 + shift, 0.2 + shift, 0.3 + shift, 0.4], 0.5)
    out = tmp_path / "figs" / "curves.png"
    code, _, err = _cli(capsys, "plot", "curves", fast, "--label", "SAMora", "--out", out,
                        "--group", f"samed={tmp_path}/fewshot/samed-k3-d*")
    assert code == 0, err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"]  # written atomically: no temporary left

    from samora_kit.eval.curves import group_curve

    group = group_curve("samed", f"{tmp_path}/fewshot/samed-k3-d*")
    assert group.runs == 3 and group.epochs.tolist() == [1, 2, 3, 4]
    assert group.dice[0] == pytest.approx(0.15) and group.low[0] == pytest.approx(0.1)
    assert group.high[0] == pytest.approx(0.2) and group.minutes.tolist() == [0.5, 1.0, 1.5, 2.0]
    chosen = group_curve("samed", [tmp_path / "fewshot" / f"samed-k3-d{seed}" for seed in (1, 0)])  # these two only
    assert chosen.runs == 2 and chosen.dice[0] == pytest.approx(0.125) and chosen.high[0] == pytest.approx(0.15)


def test_plot_curves_names_the_run_without_validation_records(tmp_path, capsys):
    good = _fake_run(tmp_path / "good", [0.5])
    bare = _fake_run(tmp_path / "bare", [0.5], validated=False)
    code, _, err = _cli(capsys, "plot", "curves", good, bare, "--out", tmp_path / "c.png")
    assert code == 2
    assert str(bare) in err and "no validation records" in err and "data.val" in err
    assert not (tmp_path / "c.png").exists()
    code, _, err = _cli(capsys, "plot", "curves", good, "--label", "a", "--label", "b", "--out", tmp_path / "c.png")
    assert code == 2 and "2 --label for 1 run folder" in err
    code, _, err = _cli(capsys, "plot", "curves", "--group", f"x={tmp_path}/nothing*", "--out", tmp_path / "c.png")
    assert code == 2 and "no run folder matches" in err


class _Threshold(torch.nn.Module):
    """A stand-in model: label 1 where the image is brighter than 0.5."""

    image_size = 8

    def predict(self, x):  # B, 3, S, S -> B, S, S
        return (x[:, 0] > 0.5).long()


class _Cases:
    """A stand-in adapter: five 2x8x8 volumes whose labels overlap the threshold's prediction differently."""

    num_classes, class_names = 1, ["fg"]

    def load_case(self, case_id):
        from samora_kit.data.volume import Volume

        rng = np.random.default_rng(int(case_id[-1]))
        image = rng.uniform(0, 1, (2, 8, 8)).astype(np.float32)
        return Volume(case_id, image, (image > rng.uniform(0.2, 0.8)).astype(np.int64))


def _score_on_rank(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from samora_kit.eval.validation import ValidationSet
    from samora_kit.train.distributed import DistContext

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cases = [f"case_{i}" for i in range(5)]
        scores = ValidationSet(_Threshold(), _Cases(), cases, 1, 4, DistContext(rank, world))()
        Path(out, f"{rank}.json").write_text(json.dumps(scores))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_score_their_share_and_agree_with_one_process(tmp_path):
    import socket

    import torch.multiprocessing as mp

    from samora_kit.eval.validation import ValidationSet

    one = ValidationSet(_Threshold(), _Cases(), [f"case_{i}" for i in range(5)], 1, 4, loop.DistContext())()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_score_on_rank, args=(2, port, str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"{rank}.json").read_text()) == pytest.approx(one)
    assert 0.0 < one["val_dice"] < 1.0 and one["val_dice"] == one["val_dice_fg"]

