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
    """Differentiable sum over ranks (identity in a single process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(tensor)


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Mean of the gradients over ranks, in one flat all-reduce. Parameters without a
    gradient (unused heads) are skipped on every rank alike, as in one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    params = [p for p in params if p.grad is not None]
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def mean_over_ranks(values: dict[str, torch.Tensor], ctx: DistContext) -> dict[str, float]:
    """Scalars averaged over ranks in one all-reduce (each rank's local batch has the same size, so the
    mean of the per-rank means is the global batch's value): what metrics.jsonl logs under torchrun."""
    if ctx.world_size == 1 or not values:
        return {k: float(v.detach()) for k, v in values.items()}
    stacked = torch.stack([v.detach().float().reshape(()) for v in values.values()]).to(ctx.device)
    dist.all_reduce(stacked)
    return dict(zip(values, (stacked / ctx.world_size).tolist()))


def any_rank(flag: bool, ctx: DistContext) -> bool:
    if ctx.world_size == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
