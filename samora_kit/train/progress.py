"""A rich progress bar on a terminal, plain lines in logs and CI; metrics to jsonl + TensorBoard."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..errors import WriteError, describe_os_error


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
    """metrics.jsonl (append; lines past a resume point are dropped) and TensorBoard."""

    def __init__(self, run_dir: Path, resume_step: int, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / "metrics.jsonl"
        if self.path.exists():
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
            self.path.write_text("".join(ln + "\n" for ln in kept))
        self._fh = open(self.path, "a")
        from torch.utils.tensorboard import SummaryWriter

        self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step + 1)

    def write(self, step: int, values: dict[str, float], group: str = "train") -> None:
        """One line of metrics.jsonl; TensorBoard gets each number as `group/key`."""
        if not self.enabled:
            return
        try:
            self._fh.write(json.dumps({"step": step, **values}) + "\n")
            self._fh.flush()
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{group}/{key}", value, step)
        except OSError as exc:
            raise WriteError(f"{self.path.parent}: metrics.jsonl / tensorboard cannot be written "
                             f"({describe_os_error(exc)}); the last checkpoint is kept, resume with --resume") from None

    def close(self) -> None:
        if self.enabled:
            self._fh.close()
            self._tb.close()
