"""The training loop: distributed equivalence, exact resume after a kill, divergence."""

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from samora_kit.cli import main
from samora_kit.errors import TrainingDiverged
from samora_kit import runner
from samora_kit.weights.io import load_weights

from .synthetic import STAGE1_EXPERTS, armed, pool_recipe, snapshot, tiny_recipe, write_decathlon

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "samora_kit.cli"]


def _recipe(tmp_path: Path, name: str, **train) -> Path:
    data = tmp_path / "data"
    if not data.exists():
        write_decathlon(data, n_cases=4)
    path = tmp_path / f"{name}.toml"
    path.write_text(tiny_recipe(data, tmp_path / name, ["case_000", "case_001"], ["case_002"], **train))
    return path


def _run(args: list[str], env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_weights(run_dir / "weights.safetensors")[0]


def _assert_same(a: dict, b: dict, atol: float = 0.0):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0 if atol == 0 else 1e-4, msg=key)


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    # 16 slices, batch 4 -> 4 steps per epoch; killed at step 7 (mid-epoch 1), resumed from step 6
    full = _run(CLI + ["run", str(_recipe(tmp_path, "full"))])
    assert full.returncode == 0, full.stderr
    killed = _run(CLI + ["run", str(_recipe(tmp_path, "killed"))], armed(SAMORA_KIT_TEST_KILL_AT_STEP="7"))
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "weights.safetensors").exists()
    resumed = _run(CLI + ["run", str(tmp_path / "killed.toml"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    _assert_same(_weights(tmp_path / "full"), _weights(tmp_path / "killed"))
    steps = [line for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 8  # the log continues without duplicated steps


def test_two_gloo_processes_match_one_process_with_same_global_batch(tmp_path):
    one = _run(CLI + ["run", str(_recipe(tmp_path, "one"))])
    assert one.returncode == 0, one.stderr
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                "-m", "samora_kit.cli", "run", str(_recipe(tmp_path, "two"))])
    assert two.returncode == 0, two.stderr
    # summation order differs, and AdamW magnifies that noise where gradients are ~0 (attention
    # key biases); 1e-4 is still 50x below one step of lr 0.005, so a wrong shard would show
    _assert_same(_weights(tmp_path / "one"), _weights(tmp_path / "two"), atol=1e-4)
    # the logged loss, CE and Dice are the global batch's (averaged over ranks), not rank 0's half
    rows = {name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("one", "two")}
    assert len(rows["one"]) == len(rows["two"]) == 8
    for a, b in zip(rows["one"], rows["two"]):
        for key in ("loss", "ce", "dice"):
            assert b[key] == pytest.approx(a[key], abs=1e-4), (a["step"], key)


def _main(capsys, *argv) -> tuple[int, str, str]:
    """The CLI in this process: (exit code, stdout and stderr each on one line)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, " ".join(out.split()), " ".join(err.split())


def test_rerun_of_a_finished_run_reports_it_and_writes_nothing(tmp_path, capsys):
    recipe, run_dir = _recipe(tmp_path, "again", epochs=1), tmp_path / "again"
    code, _, err = _main(capsys, "run", recipe, "eval.overlays=0")
    assert code == 0, err
    before = snapshot(run_dir)  # cmdline.txt and env.json (its time) included
    for flags, said in (([], ""), (["--resume"], "--resume: nothing to resume, ")):
        code, out, err = _main(capsys, "run", recipe, "eval.overlays=0", *flags)
        assert code == 0, err
        assert f"{said}{run_dir} is finished (4 steps, this recipe); nothing is trained or written again" in out
        assert "test set" in out and "mean" in out  # its summary table
        assert "trained 4 steps" not in out and "nan" not in out and "evaluating" not in err
        assert snapshot(run_dir) == before


def test_a_run_trained_but_not_evaluated_evaluates_only(tmp_path, capsys):
    recipe, run_dir = _recipe(tmp_path, "unscored", epochs=1), tmp_path / "unscored"
    assert _main(capsys, "run", recipe, "eval.overlays=0")[0] == 0
    summary = (run_dir / "eval" / "summary.json").read_text()
    shutil.rmtree(run_dir / "eval")  # as a kill between the weights and the evaluation leaves it
    before = snapshot(run_dir)
    code, out, err = _main(capsys, "run", recipe, "eval.overlays=0")
    assert code == 0, err
    assert f"{run_dir}: trained 4 steps earlier (weights {run_dir / 'weights.safetensors'}) but not evaluated" in out
    assert "final loss" not in out
    assert (run_dir / "eval" / "summary.json").read_text() == summary
    assert {k: v for k, v in snapshot(run_dir).items() if not k.startswith("eval")} == before


def test_resume_with_no_step_left_reports_the_saved_loss_not_nan(tmp_path, capsys):
    recipe, run_dir = _recipe(tmp_path, "saved", epochs=1), tmp_path / "saved"
    code, out, _ = _main(capsys, "run", recipe, "eval.overlays=0")
    loss = re.search(r"trained 4 steps, final loss (\d\.\d{4})", out).group(1)
    (run_dir / "weights.safetensors").unlink()  # killed after the last state, before the weights
    shutil.rmtree(run_dir / "eval")
    code, out, err = _main(capsys, "run", recipe, "eval.overlays=0", "--resume")
    assert code == 0, err
    assert f"trained 4 steps, final loss {loss}" in out and "nan" not in out


def test_a_refused_rerun_names_each_differing_key_with_both_values(tmp_path, capsys):
    recipe, run_dir = _recipe(tmp_path, "changed", epochs=1), tmp_path / "changed"
    assert _main(capsys, "run", recipe, "eval.overlays=0")[0] == 0
    before = snapshot(run_dir)
    saved = run_dir / "recipe.resolved.toml"
    code, _, err = _main(capsys, "run", recipe, "eval.overlays=0", "train.lr=0.001", "--resume")
    assert code == 2
    assert f"--resume: the recipe differs from {saved} in 1 key(s): - train.lr: 0.005 in the run folder, " \
           "0.001 in this recipe" in err
    code, _, err = _main(capsys, "run", recipe, "eval.overlays=0", "train.epochs=2", "decoder.name=conv_head")
    assert code == 2
    assert f"{run_dir} already holds a run of another recipe; " in err
    assert "- train.epochs: 1 in the run folder, 2 in this recipe" in err
    assert '- decoder.name: "samed" in the run folder, "conv_head" in this recipe' in err
    assert '- decoder.transformer_depth: 2 in the run folder, not set in this recipe' in err
    assert snapshot(run_dir) == before


def test_nothing_to_resume_after_a_kill_before_the_first_state_says_a_plain_run_starts_it(tmp_path, capsys,
                                                                                         monkeypatch):
    recipe, run_dir = _recipe(tmp_path, "early", epochs=1), tmp_path / "early"

    def interrupt(step: int) -> None:
        raise KeyboardInterrupt  # Ctrl-C at step 1; the first state is saved at step 2

    monkeypatch.setattr(runner, "run", functools.partial(runner.run, step_callbacks=[interrupt]))  # what the CLI calls
    assert _main(capsys, "run", recipe, "eval.overlays=0")[0] == 130
    monkeypatch.undo()
    assert (run_dir / "recipe.resolved.toml").exists() and not (run_dir / "checkpoints").exists()
    code, _, err = _main(capsys, "run", recipe, "eval.overlays=0", "--resume")
    assert code == 2
    assert "nothing to resume: the run stopped before its first checkpoint" in err
    assert "`run` without --resume starts it" in err
    code, out, err = _main(capsys, "run", recipe, "eval.overlays=0")
    assert code == 0, err
    assert "trained 4 steps" in out


def test_rerunning_a_chain_reuses_every_finished_stage(tmp_path, capsys):
    """[pretrain] and [compare], as the quick start: run again, stage 1, stage 2 and the baseline are all
    reused, nothing is rewritten, and the comparison prints again."""
    data = write_decathlon(tmp_path / "data", n_cases=4)
    stage1 = tmp_path / "stage1.toml"  # seed 7, as tiny_recipe's: the same random base
    stage1.write_text(pool_recipe(data, tmp_path / "stage1", seed=7, max_steps=2,
                                  tail='[[experts]]\nname = "patch"\npretext = { name = "mae", hidden_dim = 16 }\n'))
    baseline = tmp_path / "baseline.toml"
    baseline.write_text(tiny_recipe(data, tmp_path / "baseline", ["case_000", "case_001"], ["case_002"], epochs=1)
                        .replace('name = "test"', 'name = "baseline"').replace("overlays = 1", "overlays = 0"))
    stage2 = tmp_path / "stage2.toml"
    stage2.write_text(tiny_recipe(data, tmp_path / "stage2", ["case_000", "case_001"], ["case_002"], epochs=1)
                      .replace("overlays = 1", "overlays = 0")
                      .replace("image_size = 64\n", 'image_size = 64\nexperts = { names = ["patch"] }\n')
                      + f'\n[fuser]\nname = "sum"\n\n[pretrain]\nrecipe = "{stage1}"\n\n'
                        f'[compare]\nrecipes = ["{baseline}"]\n')
    code, out, err = _main(capsys, "run", stage2)
    assert code == 0, err
    before = {name: snapshot(tmp_path / name) for name in ("stage1", "stage2", "baseline")}
    code, out, err = _main(capsys, "run", stage2)
    assert code == 0, err
    assert "expert patch: reusing" in out and f"every expert pack of {tmp_path / 'stage1'} is finished" in out
    assert f"{tmp_path / 'stage2'} is finished (4 steps, this recipe)" in out
    assert f"compare: reusing the finished run {tmp_path / 'baseline'}" in out
    assert "test set, transunet policy" in out  # the comparison table
    assert "final loss" not in out
    assert {name: snapshot(tmp_path / name) for name in before} == before


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_state(tmp_path, monkeypatch):
    from samora_kit.data.slices import SliceDataset
    from samora_kit.plugins import default_registry
    from samora_kit.recipe import load_recipe
    from samora_kit.train.distributed import DistContext
    from samora_kit.train.loop import train
    from samora_kit.train.losses import DiceCELoss
    from samora_kit.train.model import SegmentationObjective, build_dataset, build_model

    registry = default_registry()
    recipe = load_recipe(_recipe(tmp_path, "nan"), registry)
    adapter = build_dataset(recipe, registry)
    model = build_model(recipe, registry, adapter.num_classes)
    dataset = SliceDataset([adapter.load_case(c) for c in adapter.cases("train")], 64)
    calls = {"n": 0}
    forward = model.decoder.forward

    def poisoned(embedding):
        calls["n"] += 1
        out = forward(embedding)
        return out * float("nan") if calls["n"] == 3 else out

    monkeypatch.setattr(model.decoder, "forward", poisoned)
    run_dir = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match="loss became nan at step 2"):
        train(SegmentationObjective(model, DiceCELoss(adapter.num_classes)), dataset, recipe.train, 7,
              run_dir, DistContext(), show_progress=False)
    state, header = load_weights(run_dir / "checkpoints" / "last.safetensors")
    assert header["step"] == 2
    assert all(torch.isfinite(t).all() for t in state.values())
    assert not (run_dir / "weights.safetensors").exists()


def test_stage1_resumed_after_a_kill_mid_epoch_gives_bit_identical_expert_packs(tmp_path):
    """Pretext tasks draw views, masks and noise from the global generators: their states travel with
    the training state, so the resumed run draws what the uninterrupted one drew."""
    data = write_decathlon(tmp_path / "data", n_cases=4)
    for name in ("full", "killed"):
        (tmp_path / f"{name}.toml").write_text(pool_recipe(data, tmp_path / name, seed=3, max_steps=6, tail=STAGE1_EXPERTS))
    overrides = ["train.checkpoint_every=2", "train.epochs=2"]  # 32 slices / 4: 8 steps per epoch, cut to 6
    full = _run(CLI + ["run", str(tmp_path / "full.toml"), *overrides])
    assert full.returncode == 0, full.stderr
    # the first expert is killed at step 5 (its state holds step 4); the other two have not started
    killed = _run(CLI + ["run", str(tmp_path / "killed.toml"), *overrides], armed(SAMORA_KIT_TEST_KILL_AT_STEP="5"))
    assert killed.returncode == -signal.SIGKILL
    resumed = _run(CLI + ["run", str(tmp_path / "killed.toml"), *overrides, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    for expert in ("image", "patch", "pixel"):
        full_pack, _ = load_weights(tmp_path / "full" / "experts" / f"{expert}.safetensors")
        resumed_pack, _ = load_weights(tmp_path / "killed" / "experts" / f"{expert}.safetensors")
        _assert_same(full_pack, resumed_pack)


@pytest.mark.parametrize("target, count", [("last.safetensors", 2), ("weights.safetensors", 1), ("summary.json", 1)])
def test_a_kill_inside_a_save_loses_nothing_and_resume_finishes_the_run(tmp_path, target, count):
    """Killed between writing a file's temporary copy and renaming it over the file: the old file is
    intact, and `--resume` removes the temporary file and ends with the uninterrupted run's weights."""
    full = _run(CLI + ["run", str(_recipe(tmp_path, "full"))])
    assert full.returncode == 0, full.stderr
    recipe = _recipe(tmp_path, "killed")
    killed = _run(CLI + ["run", str(recipe)],
                  armed(SAMORA_KIT_TEST_KILL_SAVING=target, SAMORA_KIT_TEST_KILL_SAVE_COUNT=str(count)))
    assert killed.returncode == -signal.SIGKILL
    run_dir = tmp_path / "killed"
    assert len(list(run_dir.rglob(f".{target}.*.tmp"))) == 1  # the save the kill interrupted
    if target == "last.safetensors":  # the state of the previous save is whole
        assert load_weights(run_dir / "checkpoints" / "last.safetensors")[1]["step"] == 2
    resumed = _run(CLI + ["run", str(recipe), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert "removed 1 temporary file(s) of interrupted saves" in " ".join(resumed.stderr.split())
    assert not list(run_dir.rglob(".*.tmp"))
    _assert_same(_weights(tmp_path / "full"), _weights(run_dir))
    assert (run_dir / "eval" / "summary.json").exists()
