"""A run's length and learning rate: steps per epoch, total and warm-up steps; SAMed's linear
warm-up then polynomial decay, per parameter group."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import SamoraError

DEFAULT_WARMUP = 0.05  # 5 % of the run's steps: a default that always leaves warm-up (docs/decisions.md)


@dataclass(frozen=True)
class RunLength:
    samples: int          # training items (slices)
    steps_per_epoch: int  # optimizer steps; the last incomplete batch is dropped
    total: int            # optimizer steps of the whole run (train.max_steps may cut it)
    warmup: int           # warm-up steps, always fewer than `total`

    def describe(self) -> str:
        return (f"{self.samples} training slices, {self.steps_per_epoch} steps per epoch, {self.total} steps, "
                f"warm-up {self.warmup} steps")


def warmup_steps(warmup: int | float, total: int) -> int:
    """train.warmup as steps: an integer is a step count, a float a fraction of the run's `total` steps."""
    return warmup if isinstance(warmup, int) else round(warmup * total)


def run_length(train_cfg, samples: int, world_size: int = 1, what: str = "training slices") -> RunLength:
    """The run a [train] section makes of `samples` items; SamoraError naming the numbers when it cannot run."""
    batch = train_cfg.batch_size
    if batch % world_size:
        raise SamoraError(f"train.batch_size = {batch} must be divisible by the {world_size} processes")
    steps_per_epoch = samples // batch
    if steps_per_epoch == 0:
        raise SamoraError(f"train.batch_size = {batch} is larger than the {samples} {what}; "
                          "lower it or select more training cases")
    total = train_cfg.epochs * steps_per_epoch
    how = f"{train_cfg.epochs} epochs x {steps_per_epoch} steps of {batch} over {samples} {what}"
    if train_cfg.max_steps and train_cfg.max_steps < total:
        total = train_cfg.max_steps
        how += f", cut to train.max_steps = {total}"
    warmup = warmup_steps(train_cfg.warmup, total)
    if warmup > 0 and warmup >= total:
        raise SamoraError(f"train.warmup = {train_cfg.warmup!r} is {warmup} warm-up steps, not fewer than the run's "
                          f"{total} steps ({how}): the learning rate would never leave warm-up. Give fewer "
                          f"steps, or a fraction of the run (e.g. train.warmup = 0.1)")
    return RunLength(samples, steps_per_epoch, total, warmup)


def samed_lr(step: int, base_lr: float, warmup_iters: int, max_iters: int, power: float = 0.9) -> float:
    if step < warmup_iters:
        return base_lr * (step + 1) / warmup_iters
    progress = (step - warmup_iters) / max(1, max_iters)
    return base_lr * max(0.0, 1.0 - progress) ** power


def learning_rate(schedule: str, step: int, base_lr: float, warmup: int, total: int, power: float = 0.9) -> float:
    """The lr of `step`: linear warm-up over `warmup` steps, then `schedule` ("poly": SAMed's polynomial
    decay, "cosine": half a cosine to 0 at `total`, "constant")."""
    if schedule == "poly":
        return samed_lr(step, base_lr, warmup, total, power)
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    raise ValueError(f"unknown schedule {schedule!r}; expected poly, cosine or constant")
