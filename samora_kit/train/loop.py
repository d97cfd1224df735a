"""The one training loop: CPU, one GPU or torchrun DDP, resumable mid-epoch.

Data order is a pure function of (seed, epoch) and augmentation of (seed, epoch, index),
so a resumed run and an N-process run see exactly the samples of a plain run.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..errors import SamoraError, TrainingDiverged
from ..interfaces import Diagnostics, EpochAware
from .checkpoint import load_training_state, save_training_state
from .distributed import DistContext, data_parallel, first_non_finite, mean_over_ranks
from .loader import RunBatches, batch_to_device, run_loader
from .optim import build_optimizer, lr_metric
from .progress import MetricsLog, TrainingProgress
from .runfolder import STATE_FILE
from .schedule import learning_rate, run_length

StepCallback = Callable[[int], None]  # called with the step number after every optimizer step and its checkpoint


class EpochValidation(Protocol):
    """Scores the model being trained on held-out cases (samora_kit.eval.validation.ValidationSet)."""

    every: int  # epochs between scorings; the run's last step is scored too

    def __call__(self) -> dict[str, float]: ...


@dataclass
class TrainResult:
    steps: int
    final_loss: float | None  # the last step's; a resumed run with no step left has its state's (None: unknown)

    def describe(self) -> str:
        """'60 steps, final loss 0.1234'."""
        loss = f"final loss {self.final_loss:.4f}" if self.final_loss is not None else "final loss not recorded"
        return f"{self.steps} steps, {loss}"


def train(objective: torch.nn.Module, dataset, train_cfg, seed: int, run_dir: Path,
          ctx: DistContext, resume: bool = False, header: dict | None = None,
          show_progress: bool = True, compile_model: bool = False,
          validation: EpochValidation | None = None, step_callbacks: Sequence[StepCallback] = ()) -> TrainResult:
    """Train `objective`'s trainable parameters; `objective(*batch)` returns a dict with `loss`
    (plus scalars to log). `dataset` yields batches (tuples or tensors) and is EpochAware.

    With `validation`, every `validation.every` epochs and at the last step the scores go to
    metrics.jsonl with the epoch, the training wall time (`elapsed_s`, validation excluded) and
    the validation's own (`val_s`); the model's modes and the random generators are restored
    after it, so the run trains exactly what it would have without it.

    `step_callbacks` are called, in order, with the step number after every optimizer step and its
    checkpoint (a benchmark's clock, a test's interruption; runner.run and the flows pass them on).

    Nothing waits for the device between log steps: the step's scalars stay on the device and are
    read every `train.log_every` steps, and the divergence check reads a device-side flag at every
    log and checkpoint step, before anything is saved."""
    length = run_length(train_cfg, len(dataset), ctx.world_size)
    global_batch, steps_per_epoch, total = train_cfg.batch_size, length.steps_per_epoch, length.total

    objective.to(ctx.device)
    optimizer = build_optimizer(objective, train_cfg)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    probes = [m for m in objective.modules() if isinstance(m, Diagnostics)]
    state_path = run_dir / STATE_FILE
    step, elapsed_before = 0, 0.0  # wall seconds trained before this process (a resumed run's past)
    saved_loss = None  # the loss of the resumed state's last step: the result when no step is left
    if resume:
        if not state_path.exists():
            raise SamoraError(f"--resume: {state_path} does not exist; nothing to resume: the run stopped before "
                              "its first checkpoint, and `run` without --resume starts it")
        resumed = load_training_state(state_path, objective, optimizer)
        step = resumed["step"]
        elapsed_before = float(resumed.get("elapsed_s", 0.0))
        saved_loss = resumed.get("loss")
    header = {**(header or {}), "steps_per_epoch": steps_per_epoch}
    precision = autocast_dtype(train_cfg.amp, ctx.device)  # None: fp32
    scaler = torch.amp.GradScaler(ctx.device.type) if precision == torch.float16 else None  # fp16 needs loss scaling
    if scaler is not None and resume and "grad_scaler" in resumed:
        scaler.load_state_dict(resumed["grad_scaler"])
    forward = data_parallel(objective, ctx)  # gradients averaged over ranks while backward runs
    if compile_model:
        forward = torch.compile(forward)
    sampler = RunBatches(len(dataset), seed, step, total, steps_per_epoch, global_batch,
                         global_batch // ctx.world_size, ctx.rank)
    loader = run_loader(dataset, sampler, seed, train_cfg.num_workers, ctx.device)

    progress = TrainingProgress(total, step, train_cfg.log_every, enabled=show_progress and ctx.is_main)
    log = MetricsLog(run_dir, step, enabled=ctx.is_main)
    meter, health = StepMeter(), Divergence(ctx.device)
    clock = TrainingClock(elapsed_before)
    last_loss = None
    try:
        objective.train()
        for batch in loader:
            epoch = step // steps_per_epoch
            if isinstance(objective, EpochAware):  # epoch-dependent losses (H-SAM's decoder weighting)
                objective.set_epoch(epoch)
            lrs = {}
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(train_cfg.schedule, step, group["base_lr"], length.warmup, total,
                                            train_cfg.poly_power)
                lrs[lr_metric(group["name"])] = group["lr"]
            logging = (step + 1) % train_cfg.log_every == 0 or step + 1 == total or step == 0  # and a run's first step
            recording = bool(probes) and logging
            for probe in probes if recording else ():
                probe.record_diagnostics(True)
            with torch.autocast(ctx.device.type, dtype=precision or torch.bfloat16, enabled=precision is not None):
                losses = forward(*batch_to_device(batch, ctx.device))
            health.watch(losses["loss"], step)
            optimizer.zero_grad(set_to_none=True)
            (scaler.scale(losses["loss"]) if scaler else losses["loss"]).backward()
            if train_cfg.grad_clip:
                if scaler:
                    scaler.unscale_(optimizer)
                losses["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, train_cfg.grad_clip)  # before clipping
            if scaler:
                scaler.step(optimizer)  # skips the step when the scaled gradients overflowed
                scaler.update()
            else:
                optimizer.step()
            step += 1
            meter.add(losses)
            last_loss = losses["loss"].detach()
            checkpointing = step % train_cfg.checkpoint_every == 0 or step == total
            validating = validation is not None and (step == total or (
                step % steps_per_epoch == 0 and (step // steps_per_epoch) % validation.every == 0))
            if logging or checkpointing or validating:  # every rank alike: the check is a collective under torchrun
                health.check(ctx, state_path)  # before anything of this step is saved
            values = None
            if logging:
                values = meter.read(ctx) | lrs  # the global batch's means since the last log line
                if recording:  # measured in this step's forward, before its update
                    values |= {k: float(v) for probe in probes for k, v in probe.diagnostics().items()}
                log.write(step, {**values, "epoch": epoch, "elapsed_s": clock.elapsed()})
            for probe in probes if recording else ():
                probe.record_diagnostics(False)
            progress.update(step, epoch, values)
            if validating:  # before the checkpoint: a run killed in between scores this step again on resume
                record = validate(validation, objective, clock, ctx, step / steps_per_epoch)
                log.write(step, record, group="val")
                progress.note(f"validation at epoch {record['epoch']:g}: Dice {record['val_dice']:.4f} "
                              f"({record['val_s']:.1f} s)")
            if checkpointing and ctx.is_main:
                scaling = {"grad_scaler": scaler.state_dict()} if scaler else {}
                save_training_state(state_path, objective, optimizer,
                                    {**header, **scaling, "step": step, "elapsed_s": clock.elapsed()}, last_loss)
            for callback in step_callbacks:
                callback(step)
    finally:
        progress.close()
        log.close()
    return TrainResult(step, float(last_loss) if last_loss is not None else saved_loss)


class TrainingClock:
    """Wall seconds spent training: since the loop started (plus a resumed run's past), validation excluded."""

    def __init__(self, before: float) -> None:
        self.before = before
        self.started, self.paused = time.monotonic(), 0.0

    def elapsed(self) -> float:
        """Read at log steps, where the host has just waited for the device anyway."""
        return round(self.before + time.monotonic() - self.started - self.paused, 3)

    def pause(self, seconds: float) -> None:
        self.paused += seconds


def validate(validation: EpochValidation, objective: torch.nn.Module, clock: TrainingClock, ctx: DistContext,
             epoch: float) -> dict[str, float]:
    """One validation record: the scores, the epoch (epochs completed), training and validation seconds.
    The device finishes the training step first, so its time is not counted as validation's."""
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    elapsed = clock.elapsed()
    started = time.monotonic()
    with torch.no_grad(), preserved_training_state(objective, ctx.device):
        scores = validation()
    seconds = time.monotonic() - started
    clock.pause(seconds)
    whole = round(epoch)
    return {"epoch": whole if abs(epoch - whole) < 1e-9 else round(epoch, 4), **scores,
            "elapsed_s": elapsed, "val_s": round(seconds, 3)}


@contextmanager
def preserved_training_state(modules: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """Inside, validation may put the model in eval mode and draw random numbers; after, every module's
    train/eval mode and the torch (CPU and `device`), numpy and Python generators are as they were, so
    training goes on exactly as it would have without validation."""
    modes = [(m, m.training) for m in modules.modules()]
    python, numpy = random.getstate(), np.random.get_state()
    cuda = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda, device_type="cuda"):
            yield
    finally:
        for module, training in modes:
            module.training = training
        random.setstate(python)
        np.random.set_state(numpy)


class StepMeter:
    """The steps' scalars summed on the device; `read` waits for them once, at a log step."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for key, value in values.items():
            value = value.detach().float().reshape(())
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.count += 1

    def read(self, ctx: DistContext) -> dict[str, float]:
        means = {key: total / self.count for key, total in self.sums.items()}
        self.sums, self.count = {}, 0
        return mean_over_ranks(means, ctx)


class Divergence:
    """The first step whose loss was not finite, kept on the device until `check` reads it."""

    def __init__(self, device: torch.device) -> None:
        self.first_step = torch.full((), -1, dtype=torch.long, device=device)
        self.loss = torch.zeros((), device=device)

    def watch(self, loss: torch.Tensor, step: int) -> None:
        first = (self.first_step < 0) & ~torch.isfinite(loss.detach())
        self.first_step = torch.where(first, step, self.first_step)
        self.loss = torch.where(first, loss.detach().float(), self.loss)

    def check(self, ctx: DistContext, state_path: Path) -> None:
        step, loss = first_non_finite(self.first_step, self.loss, ctx)
        if step >= 0:
            raise TrainingDiverged(
                f"loss became {loss} at step {step}; training stopped, the last good state is "
                f"{state_path if state_path.exists() else 'none'}; lower train.lr or check the data")


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """train.amp as the autocast dtype: "auto" is bf16 on CUDA and fp32 (None) elsewhere."""
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float16 if amp == "fp16" else None
