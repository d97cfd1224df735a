"""Failures from outside the program get a clear message and lose nothing; a run folder has one owner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from samora_kit.cli import main
from samora_kit.train.lock import LOCK_FILE, run_folder_lock
from samora_kit.weights.io import atomic_write_text

from .synthetic import armed, relabel, snapshot, tiny_recipe, write_decathlon

CLI = [sys.executable, "-m", "samora_kit.cli"]


@pytest.fixture
def recipe(tmp_path) -> Path:
    data = write_decathlon(tmp_path / "data", n_cases=3)
    path = tmp_path / "recipe.toml"
    path.write_text(tiny_recipe(data, tmp_path / "run", ["case_000", "case_001"], ["case_002"], epochs=1,
                                warmup=0))
    return path


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())


def test_overrides_may_follow_the_flags(recipe, tmp_path, capsys):
    code, _, err = _cli(capsys, "run", recipe, "--nproc-per-node", "1", f"run.output_dir={tmp_path / 'after'}",
                        "eval.overlays=0")
    assert code == 0, err
    assert (tmp_path / "after" / "weights.safetensors").exists()
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(recipe), "--bogus"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_fewer_than_one_process_is_refused(recipe, capsys):
    code, _, err = _cli(capsys, "run", recipe, "--nproc-per-node", "0")
    assert code == 2 and "--nproc-per-node 0: start at least 1 process" in err


def test_predict_refuses_inputs_that_would_overwrite_each_other(tmp_path, capsys):
    inputs = [tmp_path / "a" / "scan.nii.gz", tmp_path / "b" / "scan.nii.gz"]
    code, _, err = _cli(capsys, "predict", tmp_path / "any-run", *inputs, "--output", tmp_path / "preds")
    assert code == 2
    assert f"{inputs[0]}, {inputs[1]} would all be written to {tmp_path / 'preds' / 'scan.nii.gz'}" in err
    assert not (tmp_path / "preds").exists()


@pytest.mark.parametrize("case, expected", [
    ("folder", "is a folder; expected a recipe file"),
    ("latin-1", "not UTF-8 text (byte 5); a recipe is a TOML file"),
    ("base number", "base = 5: expected the path of another recipe file, as a string"),
    ("base folder", "is a folder; expected a recipe file"),
    ("duplicate key", "key train.lr is given twice"),
    ("duplicate table", "table [train] appears twice"),
])
def test_recipe_files_that_are_not_recipes_get_one_clear_message(tmp_path, capsys, case, expected):
    path = tmp_path / "recipe.toml"
    if case == "folder":
        path.mkdir()
    elif case == "latin-1":
        path.write_bytes("# café\n[run]\n".encode("latin-1"))  # é is byte 5
    elif case == "base number":
        path.write_text("base = 5\n")
    elif case == "base folder":
        path.write_text('base = "."\n')
    elif case == "duplicate key":
        path.write_text("[train]\nlr = 0.1\nepochs = 2\nlr = 0.2\n")
    else:
        path.write_text("[train]\nlr = 0.1\n[run]\nseed = 1\n[train]\nepochs = 2\n")
    code, _, err = _cli(capsys, "validate", path)
    assert code == 2 and "Traceback" not in err
    assert expected in err


def test_run_names_and_paths_that_look_like_markup_are_printed_as_they_are(recipe, tmp_path, capsys):
    code, out, err = _cli(capsys, "run", recipe, "run.name=exp[/x]", f"run.output_dir={tmp_path / 'odd[/y]'}",
                          "eval.overlays=0")
    assert code == 0, err
    assert "exp[/x]" in out and str(tmp_path / "odd[/y]") in " ".join(out.split())


def test_output_dir_that_is_a_file_is_refused_before_anything_is_built(recipe, tmp_path, capsys):
    (tmp_path / "taken").write_text("not a folder")
    code, _, err = _cli(capsys, "run", recipe, f"run.output_dir={tmp_path / 'taken'}")
    assert code == 2 and f"{tmp_path / 'taken'}: is a file; run.output_dir must name a folder" in err
    assert (tmp_path / "taken").read_text() == "not a folder"


def test_a_second_run_on_a_folder_in_use_is_refused_at_once(recipe, tmp_path, capsys):
    run_dir = tmp_path / "run"
    with run_folder_lock(run_dir):
        before = snapshot(run_dir)
        code, _, err = _cli(capsys, "run", recipe)
        assert code == 2
        assert f"{run_dir} is in use by pid {os.getpid()} on " in err and "another run.output_dir" in err
        assert snapshot(run_dir) == before  # nothing of the holder's was touched
    assert not run_dir.exists()  # the holder made the folder and wrote nothing: released, it leaves none
    code, _, err = _cli(capsys, "run", recipe, "eval.overlays=0")
    assert code == 0, err


def test_a_failed_start_leaves_no_empty_run_folder(recipe, tmp_path, capsys):
    code, _, _ = _cli(capsys, "run", recipe, f"data.root={tmp_path / 'missing'}")
    assert code == 2 and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_killed_run_is_taken_over_with_its_torn_metrics_line_and_temp_files_removed(recipe, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([*CLI, "run", str(recipe), "train.checkpoint_every=2"], capture_output=True, text=True,
                            env={**env, **armed(SAMORA_KIT_TEST_KILL_AT_STEP="3")}, timeout=600)
    assert killed.returncode == -signal.SIGKILL
    run_dir = tmp_path / "run"
    assert (run_dir / LOCK_FILE).read_text().startswith("pid ")  # the killed holder's
    with open(run_dir / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 4, "loss": 0.5, "ce')  # a kill in the middle of a line
    (run_dir / "checkpoints" / ".last.safetensors.abc123.tmp").write_bytes(b"half a save")
    resumed = subprocess.run([*CLI, "run", str(recipe), "train.checkpoint_every=2", "--resume"], capture_output=True,
                             text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    err = " ".join(resumed.stderr.split())
    assert "taking over from a run that ended without releasing it (pid" in err
    assert "removed 1 temporary file(s) of interrupted saves" in err
    assert "dropped 1 torn line(s)" in err
    assert not list(run_dir.rglob(".*.tmp"))
    steps = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 4 and (run_dir / "weights.safetensors").exists()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_respect_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = atomic_write_text(tmp_path / "report.json", "{}\n")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode


def test_a_label_off_its_images_grid_is_refused_naming_both(recipe, tmp_path, capsys):
    relabel(tmp_path / "data", "case_001", affine=np.diag([3.0, 3.0, 1.0, 1.0]))  # the image: 1 x 1 x 2 mm
    code, _, err = _cli(capsys, "run", recipe)
    assert code == 2
    assert f"{tmp_path / 'data' / 'labelsTr' / 'case_001.nii.gz'}: the label's geometry (spacing (3.0, 3.0, 1.0)" in err
    assert f"differs from its image {tmp_path / 'data' / 'imagesTr' / 'case_001.nii.gz'} (spacing (1.0, 1.0, 2.0)" in err


def test_empty_labels_warn_and_an_all_empty_training_set_is_refused(recipe, tmp_path, capsys):
    relabel(tmp_path / "data", "case_000", array=np.zeros((24, 24, 8), np.uint8))
    code, out, err = _cli(capsys, "run", recipe, "eval.overlays=0")
    assert code == 0, err
    assert "labelsTr/case_000.nii.gz: the label map is empty (background only)" in " ".join(out.split())
    relabel(tmp_path / "data", "case_001", array=np.zeros((24, 24, 8), np.uint8))
    code, _, err = _cli(capsys, "run", recipe, f"run.output_dir={tmp_path / 'second'}")
    assert code == 2 and "every training label is empty" in err and "there is nothing to learn" in err
    assert not (tmp_path / "second").exists()
