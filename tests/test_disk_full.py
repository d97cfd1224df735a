"""A full disk at any write site of a run: one message naming the file, exit code 1, no traceback,
nothing lost (the previous file stays, no temporary file is left, `--resume` still works)."""

from __future__ import annotations

import errno
import json
import os
import struct
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


def _fill_disk_when_appending(monkeypatch, name: str, free: int) -> None:
    """Appends to files whose name starts with `name` find `free` bytes left: the write that reaches
    the end writes what fits (as the kernel does), the next fails with ENOSPC."""
    real_write, left = os.write, [free]

    def write(fd: int, data) -> int:
        if not Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(name):
            return real_write(fd, data)
        if left[0] == 0:
            raise FULL
        written = real_write(fd, bytes(data[:left[0]]))
        left[0] -= written
        return written

    monkeypatch.setattr(progress.os, "write", write)


def _whole_records(path: Path) -> int:
    """How many TFRecords the event file holds; fails on a torn one."""
    data, at, count = path.read_bytes(), 0, 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at:at + 8])
        at += 8 + 4 + length + 4
        assert at <= len(data), f"{path}: a torn record at byte {at}"
        count += 1
    return count


def test_a_full_disk_at_the_metrics_log_is_one_line_naming_the_file_and_leaves_no_torn_line(recipe, tmp_path,
                                                                                             capsys, monkeypatch):
    _fill_disk_when_appending(monkeypatch, "metrics.jsonl", free=500)  # two and a half lines
    code, err = _run(capsys, "run", recipe)
    path = tmp_path / "run" / "metrics.jsonl"
    assert code == 1 and "Traceback" not in err and "Exception in thread" not in err
    assert f"{path}: cannot be written (no space left on device: free some disk space, or write elsewhere)" in err
    text = path.read_text()
    assert text.endswith("\n") and [json.loads(line)["step"] for line in text.splitlines()] == [1, 2]


def test_full_disk_at_tensorboard_is_one_line_naming_the_file(recipe, tmp_path, capsys, monkeypatch):
    _fill_disk_when_appending(monkeypatch, "events.out.tfevents", free=500)  # its head, two steps and half a third
    code, err = _run(capsys, "run", recipe)
    assert code == 1 and "Traceback" not in err and "Exception in thread" not in err
    (events,) = (tmp_path / "run" / "tensorboard").iterdir()
    assert f"{events}: cannot be written (no space left on device: free some disk space, or write elsewhere)" in err
    assert _whole_records(events) == 2 + 2  # the head (version, purge step) and steps 1 and 2, no torn record
    monkeypatch.undo()
    code, err = _run(capsys, "run", recipe, "--resume")  # the last checkpoint is kept: the run goes on
    assert code == 0, err


def test_a_full_disk_at_the_run_lock_names_it_and_leaves_no_folder(recipe, tmp_path, capsys, monkeypatch):
    _fill_disk_when_appending(monkeypatch, "run.lock", free=0)
    code, err = _run(capsys, "run", recipe)
    assert code == 1 and "Traceback" not in err
    assert f"{tmp_path / 'run' / 'run.lock'}: cannot be written (no space left on device" in err
    assert not (tmp_path / "run").exists()


def test_a_full_disk_at_a_prediction_names_it(recipe, tmp_path, capsys, monkeypatch):
    code, err = _run(capsys, "run", recipe, "eval.overlays=0")
    assert code == 0, err
    scan = tmp_path / "data" / "imagesTr" / "case_002.nii.gz"
    _fill_disk_when_writing(monkeypatch, "case_002.nii.gz")
    code, err = _run(capsys, "predict", tmp_path / "run", scan, "--output", tmp_path / "preds", "--no-overlays")
    assert code == 1 and "Traceback" not in err
    assert f"{tmp_path / 'preds' / 'case_002.nii.gz'}: cannot be written (no space left on device" in err
    assert not list((tmp_path / "preds").glob("*"))


def test_debug_shows_the_traceback_and_keeps_the_exit_code(recipe, capsys, monkeypatch):
    _fill_disk_when_writing(monkeypatch, "weights.safetensors")
    code, err = _run(capsys, "--debug", "run", recipe)
    assert code == 1
    assert "Traceback" in err and "weights.safetensors: cannot be written" in err
