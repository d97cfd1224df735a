"""The one training loop: CPU, one GPU or torchrun DDP, resumable mid-epoch.

Data order is a pure function of (seed, epoch) and augmentation of (seed, epoch, index),
so a resumed run and an N-process run see exactly the samples of a plain run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..errors import SamoraError, TrainingDiverged
from ..interfaces import Diagnostics, EpochAware
from .checkpoint import load_training_state, save_training_state
from .distributed import DistContext, any_rank, average_gradients, mean_over_ranks
from .optim import build_optimizer, lr_metric
from .progress import MetricsLog, TrainingProgress
from .runfolder import STATE_FILE
from .schedule import learning_rate, run_length

# Extension point: called with the step number after every optimizer step and its checkpoint (the
# tests' kill switch hangs here; tests/kill_switch/sitecustomize.py).
step_callbacks: list[Callable[[int], None]] = []


@dataclass
class TrainResult:
    steps: int
    final_loss: float


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)


def train(objective: torch.nn.Module, dataset, train_cfg, seed: int, run_dir: Path,
          ctx: DistContext, resume: bool = False, header: dict | None = None,
          show_progress: bool = True) -> TrainResult:
    """Train `objective`'s trainable parameters; `objective(*batch)` returns a dict with `loss`
    (plus scalars to log). `dataset` yields batches (tuples or tensors) and is EpochAware."""
    length = run_length(train_cfg, len(dataset), ctx.world_size)
    global_batch, steps_per_epoch, total = train_cfg.batch_size, length.steps_per_epoch, length.total
    local_batch = global_batch // ctx.world_size

    objective.to(ctx.device)
    optimizer = build_optimizer(objective, train_cfg)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    probes = [m for m in objective.modules() if isinstance(m, Diagnostics)]
    state_path = run_dir / STATE_FILE
    step = 0
    if resume:
        if not state_path.exists():
            raise SamoraError(f"--resume: {state_path} does not exist; nothing to resume")
        resumed = load_training_state(state_path, objective, optimizer)
        step = resumed["step"]
    header = {**(header or {}), "steps_per_epoch": steps_per_epoch}
    precision = autocast_dtype(train_cfg.amp, ctx.device)  # None: fp32
    scaler = torch.amp.GradScaler(ctx.device.type) if precision == torch.float16 else None  # fp16 needs loss scaling
    if scaler is not None and resume and "grad_scaler" in resumed:
        scaler.load_state_dict(resumed["grad_scaler"])

    progress = TrainingProgress(total, step, train_cfg.log_every, enabled=show_progress and ctx.is_main)
    log = MetricsLog(run_dir, step, enabled=ctx.is_main)
    loss_value = math.nan
    try:
        objective.train()
        while step < total:
            epoch, position = divmod(step, steps_per_epoch)
            if isinstance(objective, EpochAware):  # epoch-dependent losses (H-SAM's decoder weighting)
                objective.set_epoch(epoch)
            for batch in _epoch_batches(dataset, seed, epoch, position, steps_per_epoch,
                                        global_batch, local_batch, ctx.rank, train_cfg.num_workers):
                if step >= total:
                    break
                batch = [t.to(ctx.device) for t in (batch if isinstance(batch, (list, tuple)) else [batch])]
                lrs = {}
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(train_cfg.schedule, step, group["base_lr"], length.warmup, total,
                                                train_cfg.poly_power)
                    lrs[lr_metric(group["name"])] = group["lr"]
                recording = bool(probes) and (step % train_cfg.log_every == 0 or step + 1 == total)
                if recording:
                    for probe in probes:
                        probe.record_diagnostics(True)
                with torch.autocast(ctx.device.type, dtype=precision or torch.bfloat16, enabled=precision is not None):
                    losses = objective(*batch)
                if any_rank(not torch.isfinite(losses["loss"]).item(), ctx):
                    raise TrainingDiverged(
                        f"loss became {losses['loss'].item()} at step {step} (epoch {epoch}); training "
                        f"stopped, the last good state is {state_path if state_path.exists() else 'none'}"
                        "; lower train.lr or check the data")
                optimizer.zero_grad(set_to_none=True)
                (scaler.scale(losses["loss"]) if scaler else losses["loss"]).backward()
                average_gradients(params)
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
                loss_value = losses["loss"].item()
                values = mean_over_ranks(losses, ctx) | lrs  # the global batch's values, not rank 0's
                progress.update(step, epoch, values)
                if recording:  # measured in this step's forward, before its update
                    values |= {k: float(v) for probe in probes for k, v in probe.diagnostics().items()}
                    for probe in probes:
                        probe.record_diagnostics(False)
                log.write(step, {**values, "epoch": epoch})
                if ctx.is_main and (step % train_cfg.checkpoint_every == 0 or step == total):
                    scaling = {"grad_scaler": scaler.state_dict()} if scaler else {}
                    save_training_state(state_path, objective, optimizer, {**header, **scaling, "step": step})
                for callback in step_callbacks:
                    callback(step)
    finally:
        progress.close()
        log.close()
    return TrainResult(step, loss_value)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """train.amp as the autocast dtype: "auto" is bf16 on CUDA and fp32 (None) elsewhere."""
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float16 if amp == "fp16" else None


def _epoch_batches(dataset, seed, epoch, position, steps_per_epoch, global_batch, local_batch, rank,
                   workers):
    """This rank's share of each remaining global batch of the epoch."""
    order = epoch_order(seed, epoch, len(dataset))
    batches = [order[s * global_batch + rank * local_batch: s * global_batch + (rank + 1) * local_batch].tolist()
               for s in range(position, steps_per_epoch)]
    dataset.set_epoch(epoch)
    # its own generator: a loader seeds its workers by drawing from the global RNG otherwise, and a run
    # resumed mid-epoch (one more loader) would then draw differently from the uninterrupted one
    workers_seed = torch.Generator().manual_seed(seed * 100_003 + epoch)
    yield from DataLoader(dataset, batch_sampler=batches, num_workers=workers, generator=workers_seed)
