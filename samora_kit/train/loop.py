"""The one training loop: CPU, one GPU or torchrun DDP, resumable mid-epoch.

Data order is a pure function of (seed, epoch) and augmentation of (seed, epoch, index),
so a resumed run and an N-process run see exactly the samples of a plain run.
"""

from __future__ import annotations

import math
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..errors import SamoraError, TrainingDiverged
from .checkpoint import load_training_state, save_training_state
from .distributed import DistContext, any_rank, average_gradients
from .progress import MetricsLog, TrainingProgress
from .runfolder import STATE_FILE
from .schedule import samed_lr

KILL_AT_STEP = "SAMORA_KIT_TEST_KILL_AT_STEP"  # tests: SIGKILL ourselves after this step


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
    (plus scalars to log). `dataset` yields batches (tuples or tensors) and has set_epoch()."""
    global_batch = train_cfg.batch_size
    if global_batch % ctx.world_size:
        raise SamoraError(f"train.batch_size = {global_batch} must be divisible by the "
                          f"{ctx.world_size} processes")
    steps_per_epoch = len(dataset) // global_batch
    if steps_per_epoch == 0:
        raise SamoraError(f"train.batch_size = {global_batch} is larger than the {len(dataset)} "
                          "training slices; lower it or select more training cases")
    total = train_cfg.epochs * steps_per_epoch
    total = min(total, train_cfg.max_steps) if train_cfg.max_steps else total
    local_batch = global_batch // ctx.world_size

    objective.to(ctx.device)
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train_cfg.lr, betas=train_cfg.betas,
                                  weight_decay=train_cfg.weight_decay)
    state_path = run_dir / STATE_FILE
    step = 0
    if resume:
        if not state_path.exists():
            raise SamoraError(f"--resume: {state_path} does not exist; nothing to resume")
        step = load_training_state(state_path, objective, optimizer)["step"]
    header = {**(header or {}), "steps_per_epoch": steps_per_epoch}
    use_bf16 = train_cfg.amp == "bf16" or (train_cfg.amp == "auto" and ctx.device.type == "cuda")
    kill_at = int(os.environ.get(KILL_AT_STEP, "0"))

    progress = TrainingProgress(total, step, train_cfg.log_every, enabled=show_progress and ctx.is_main)
    log = MetricsLog(run_dir, step, enabled=ctx.is_main)
    loss_value = math.nan
    try:
        objective.train()
        while step < total:
            epoch, position = divmod(step, steps_per_epoch)
            if hasattr(objective, "set_epoch"):  # epoch-dependent losses (H-SAM's decoder weighting)
                objective.set_epoch(epoch)
            for batch in _epoch_batches(dataset, seed, epoch, position, steps_per_epoch,
                                        global_batch, local_batch, ctx.rank, train_cfg.num_workers):
                if step >= total:
                    break
                batch = [t.to(ctx.device) for t in (batch if isinstance(batch, (list, tuple)) else [batch])]
                lr = samed_lr(step, train_cfg.lr, train_cfg.warmup_iters, total, train_cfg.poly_power)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    losses = objective(*batch)
                if any_rank(not torch.isfinite(losses["loss"]).item(), ctx):
                    raise TrainingDiverged(
                        f"loss became {losses['loss'].item()} at step {step} (epoch {epoch}); training "
                        f"stopped, the last good state is {state_path if state_path.exists() else 'none'}"
                        "; lower train.lr or check the data")
                optimizer.zero_grad(set_to_none=True)
                losses["loss"].backward()
                average_gradients(params)
                optimizer.step()
                step += 1
                loss_value = losses["loss"].item()
                values = {k: float(v.detach()) for k, v in losses.items()} | {"lr": lr}
                progress.update(step, epoch, values)
                log.write(step, {**values, "epoch": epoch})
                if ctx.is_main and (step % train_cfg.checkpoint_every == 0 or step == total):
                    save_training_state(state_path, objective, optimizer, {**header, "step": step})
                if step == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
    finally:
        progress.close()
        log.close()
    return TrainResult(step, loss_value)


def _epoch_batches(dataset, seed, epoch, position, steps_per_epoch, global_batch, local_batch, rank,
                   workers):
    """This rank's share of each remaining global batch of the epoch."""
    order = epoch_order(seed, epoch, len(dataset))
    batches = [order[s * global_batch + rank * local_batch: s * global_batch + (rank + 1) * local_batch].tolist()
               for s in range(position, steps_per_epoch)]
    dataset.set_epoch(epoch)
    yield from DataLoader(dataset, batch_sampler=batches, num_workers=workers)
