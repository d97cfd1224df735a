"""A rich progress bar on a terminal, plain lines in logs and CI; metrics to jsonl + TensorBoard, each
line and event whole in its file or not at all."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..errors import WriteError, describe_os_error
from ..weights.io import atomic_write_text


class TrainingProgress:
    def __init__(self, total_steps: int, start_step: int, log_every: int, enabled: bool = True):
        self.console = Console(stderr=True)
        self.total, self.log_every, self.enabled = total_steps, log_every, enabled
        self.start_step = start_step  # a resumed run's rate counts only the steps this process made
        self.interactive = enabled and sys.stderr.isatty()
        self.started = time.monotonic()
        self._bar = None
        if self.interactive:
            self._bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                                 console=self.console)
            self._task = self._bar.add_task("train", total=total_steps, completed=start_step, info="")
            self._bar.start()

    def update(self, step: int, epoch: int, values: dict[str, float] | None) -> None:
        """Move on to `step`; `values` (read on log steps only: reading waits for the device) refresh the text."""
        if not self.enabled:
            return
        if self._bar is not None:
            if values is None:
                self._bar.update(self._task, completed=step)
            else:
                info = " ".join(f"{k} {v:.4g}" for k, v in values.items())
                self._bar.update(self._task, completed=step, info=f"epoch {epoch} {info}")
        elif values is not None:
            info = " ".join(f"{k} {v:.4g}" for k, v in values.items())
            rate = (step - self.start_step) / max(time.monotonic() - self.started, 1e-9)
            print(f"step {step}/{self.total} epoch {epoch} {info} ({rate:.2f} steps/s)", flush=True)

    def note(self, text: str) -> None:
        """A line of its own: above the bar on a terminal, else beside the plain step lines."""
        if self._bar is not None:
            self.console.print(escape(text), highlight=False)
        elif self.enabled:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


class MetricsLog:
    """metrics.jsonl (append; lines past a resume point are dropped) and a TensorBoard event file."""

    def __init__(self, run_dir: Path, resume_step: int, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        self.path = run_dir / "metrics.jsonl"
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            kept = self._kept_lines(resume_step) if self.path.exists() else None
        except OSError as exc:
            raise WriteError(f"{self.path}: cannot be read or written ({describe_os_error(exc)})") from None
        if kept is not None:
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        self._jsonl = AppendOnlyFile(self.path)
        try:
            self._events = EventFile(run_dir / "tensorboard", purge_step=resume_step + 1)
        except BaseException:
            self._jsonl.close()
            raise

    def _kept_lines(self, resume_step: int) -> list[str]:
        kept, torn = [], 0
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:  # a line a kill cut short
                torn += 1
                continue
            if row is not None and row.get("step", 0) <= resume_step:
                kept.append(line)
        if torn:
            Console(stderr=True).print(f"{escape(str(self.path))}: dropped {torn} torn line(s) left by an "
                                       "interrupted run", highlight=False)
        return kept

    def write(self, step: int, values: dict[str, float], group: str = "train") -> None:
        """One line of metrics.jsonl; TensorBoard gets each number as `group/key`. A failed write raises
        WriteError naming its file and leaves no part of the line (or event) behind."""
        if not self.enabled:
            return
        self._jsonl.append((json.dumps({"step": step, **values}) + "\n").encode())
        self._events.scalars(step, {f"{group}/{k}": v for k, v in values.items() if isinstance(v, (int, float))})

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._events.close()


class AppendOnlyFile:
    """A file that grows by whole records, each in the file before `append` returns (no buffer, no
    thread). An append the file system refuses (a full disk) is cut back off, so no torn record is left,
    and raises WriteError naming the file."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as exc:
            raise self._failed(exc) from None

    def append(self, record: bytes) -> None:
        size = None
        try:
            size = os.fstat(self._fd).st_size
            rest = memoryview(record)
            while rest:
                rest = rest[os.write(self._fd, rest):]
        except OSError as exc:
            if size is not None:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, size)
            raise self._failed(exc) from None

    def _failed(self, exc: OSError) -> WriteError:
        return WriteError(f"{self.path}: cannot be written ({describe_os_error(exc)}); the file is as it was "
                          "before this write, and `run --resume` continues from the last checkpoint")

    def close(self) -> None:
        os.close(self._fd)


_event_files = itertools.count()  # tells apart the event files one process starts within one second


class EventFile:
    """A TensorBoard event file written on the calling thread. torch's SummaryWriter writes from a
    background thread, whose failure (a full disk) prints that thread's traceback and names no file."""

    def __init__(self, folder: Path, purge_step: int):
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event = Event
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}."
                f"{next(_event_files)}")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WriteError(f"{folder}: cannot be created ({describe_os_error(exc)})") from None
        self._file = AppendOnlyFile(folder / name)
        self._records = RecordWriter(self)
        self._add(Event(wall_time=time.time(), file_version="brain.Event:2"))
        # as SummaryWriter(purge_step=...): TensorBoard drops the events an interrupted run logged past it
        self._add(Event(wall_time=time.time(), step=purge_step, session_log=SessionLog(status=SessionLog.START)))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        if values:
            summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items()])
            self._add(self._event(wall_time=time.time(), step=step, summary=summary))

    def _add(self, event) -> None:
        self._records.write(event.SerializeToString())

    def write(self, record: bytes) -> None:  # RecordWriter hands over each framed record whole
        self._file.append(record)

    def close(self) -> None:
        self._file.close()
