"""CPU, one GPU or torchrun DDP with the same code: rank/world come from torchrun's env."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import SamoraError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistContext:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda" and not torch.cuda.is_available():
        raise SamoraError("run.device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistContext(rank, world, dev)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over ranks, differentiable as if one process held the whole global batch (identity in a
    single process). Forward all-reduces a detached copy; the gradient reaching this rank's summand is
    the world size times the sum's, which DDP's mean over ranks turns back into the global batch's
    gradient (every rank computes the same function of the same sum). Only a plain collective runs, in
    the forward pass: none is left for backward to order against DDP's gradient buckets."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total + dist.get_world_size() * (tensor - tensor.detach())


def data_parallel(module: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """The module under DistributedDataParallel when several ranks train (bucketed gradient all-reduces
    that overlap the backward pass), else the module itself. Parameters a step leaves without a gradient
    (an unused head) are allowed, as in one process."""
    if ctx.world_size == 1 or not any(p.requires_grad for p in module.parameters()):
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)


def mean_over_ranks(values: dict[str, torch.Tensor], ctx: DistContext) -> dict[str, float]:
    """Device scalars averaged over ranks and read in one transfer (each rank's local batch has the same
    size, so the mean of the per-rank means is the global batch's value): what metrics.jsonl logs."""
    if not values:
        return {}
    stacked = torch.stack([v.detach().float().reshape(()) for v in values.values()]).to(ctx.device)
    if ctx.world_size > 1:
        dist.all_reduce(stacked)
        stacked /= ctx.world_size
    return dict(zip(values, stacked.tolist()))


def first_non_finite(step: torch.Tensor, loss: torch.Tensor, ctx: DistContext) -> tuple[int, float]:
    """(the first step any rank saw a non-finite loss, that loss), or (-1, 0) when none did."""
    if ctx.world_size > 1:
        flagged = torch.where(step >= 0, step, torch.iinfo(torch.long).max)
        dist.all_reduce(flagged, op=dist.ReduceOp.MIN)
        mine = (step == flagged).float()
        candidates = torch.stack([torch.where(mine > 0, loss.float(), torch.zeros_like(loss)), mine])
        dist.all_reduce(candidates)
        first = int(flagged)
        if first == torch.iinfo(torch.long).max:
            return -1, 0.0
        return first, float(candidates[0] / candidates[1])
    return int(step), float(loss)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
