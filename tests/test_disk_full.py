"""A full disk at any write site of a run: one message naming the file, exit code 1, no traceback,
nothing lost (the previous file stays, no temporary file is left, `--resume` still works)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import samora_kit.weights.io as weights_io
from samora_kit.cli import main
from samora_kit.train import progress
from samora_kit.weights.io import load_weights

from .synthetic import tiny_recipe, write_decathlon

pytestmark = pytest.mark.slow
FULL = OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def recipe(tmp_path) -> Path:
    data = write_decathlon(tmp_path / "data", n_cases=3, shape=(24, 24, 6))
    path = tmp_path / "recipe.toml"
    path.write_text(tiny_recipe(data, tmp_path / "run", ["case_000", "case_001"], ["case_002"], epochs=2,
                                warmup=0, checkpoint_every=2))
    return path


def _fill_disk_when_writing(monkeypatch, name: str, after: int = 0) -> None:
    """Atomic writes of files called `name` fail with ENOSPC (after `after` successful ones)."""
    real_fsync, seen = os.fsync, []

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if Path(target).name.startswith(f".{name}."):
            seen.append(target)
            if len(seen) > after:
                raise FULL
        real_fsync(fd)

    monkeypatch.setattr(weights_io.os, "fsync", fsync)


def _run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("name, after", [("last.safetensors", 1), ("weights.safetensors", 0), ("per_case.csv", 0),
                                         ("summary.json", 0), ("case_002.png", 0), ("recipe.resolved.toml", 0)])
def test_a_full_disk_at_a_run_file_is_one_message_and_loses_nothing(recipe, tmp_path, capsys, monkeypatch, name,
                                                                     after):
    _fill_disk_when_writing(monkeypatch, name, after)
    code, err = _run(capsys, "run", recipe)
    assert code == 1, err
    assert "Traceback" not in err and "no space left on device: free some disk space, or write elsewhere" in err
    assert f"{name}: cannot be written" in err
    run_dir = tmp_path / "run"
    if run_dir.exists():
        assert not list(run_dir.rglob(".*.tmp"))
    if name == "last.safetensors":  # the first state survived the failed second save, and resumes
        assert "the previous file is unchanged" in err
        assert load_weights(run_dir / "checkpoints" / "last.safetensors")[1]["step"] == 2
        monkeypatch.undo()
        code, err = _run(capsys, "run", recipe, "--resume")
        assert code == 0, err


def test_a_full_disk_at_the_metrics_log_is_one_message(recipe, capsys, monkeypatch):
    class FullFile:
        def __init__(self, handle):
            self.handle = handle

        def write(self, text):
            raise FULL

        def __getattr__(self, name):
            return getattr(self.handle, name)

    real_init = progress.MetricsLog.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        if self.enabled:
            self._fh = FullFile(self._fh)

    monkeypatch.setattr(progress.MetricsLog, "__init__", init)
    code, err = _run(capsys, "run", recipe)
    assert code == 1 and "Traceback" not in err
    assert "metrics.jsonl / tensorboard cannot be written (no space left on device" in err


def test_a_full_disk_at_tensorboard_is_one_message(recipe, capsys, monkeypatch):
    from torch.utils.tensorboard import SummaryWriter

    def add_scalar(*args, **kwargs):
        raise FULL

    monkeypatch.setattr(SummaryWriter, "add_scalar", add_scalar)
    code, err = _run(capsys, "run", recipe)
    assert code == 1 and "metrics.jsonl / tensorboard cannot be written" in err


def test_a_full_disk_at_a_prediction_names_it(recipe, tmp_path, capsys, monkeypatch):
    code, err = _run(capsys, "run", recipe, "eval.overlays=0")
    assert code == 0, err
    scan = tmp_path / "data" / "imagesTr" / "case_002.nii.gz"
    _fill_disk_when_writing(monkeypatch, "case_002.nii.gz")
    code, err = _run(capsys, "predict", tmp_path / "run", scan, "--output", tmp_path / "preds", "--no-overlays")
    assert code == 1 and "Traceback" not in err
    assert f"{tmp_path / 'preds' / 'case_002.nii.gz'}: cannot be written (no space left on device" in err
    assert not list((tmp_path / "preds").glob("*"))


def test_debug_shows_the_traceback(recipe, capsys, monkeypatch):
    _fill_disk_when_writing(monkeypatch, "weights.safetensors")
    with pytest.raises(Exception, match="weights.safetensors: cannot be written"):
        main(["--debug", "run", str(recipe)])
