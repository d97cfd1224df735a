"""Shape checks and the projection fold shared by the fusers."""

from __future__ import annotations

import torch
from torch import nn

from samora_kit.api import SamoraError


def check_expert_names(fuser: str, expert_names, minimum: int = 1) -> list[str]:
    names = [str(n) for n in expert_names]
    if len(names) < minimum:
        raise SamoraError(f"fuser {fuser!r} needs at least {minimum} expert(s), got {len(names)}: {names}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SamoraError(f"fuser {fuser!r}: expert names must be unique, {dupes[0]!r} appears twice in {names}")
    return names


def check_deltas(fuser: str, deltas: torch.Tensor, num_experts: int, dim: int, exact_4d: bool = False) -> None:
    """deltas: K, N, L, C (the baselines also accept K, ..., C)."""
    ok_rank = deltas.dim() == 4 if exact_4d else deltas.dim() >= 2
    if not ok_rank or deltas.shape[0] != num_experts or deltas.shape[-1] != dim:
        want = f"K={num_experts}, N, L, C={dim}" if exact_4d else f"K={num_experts}, ..., C={dim}"
        raise ValueError(f"fuser {fuser!r} expects stacked expert deltas of shape ({want}); "
                         f"got {tuple(deltas.shape)}")


def fold_into_linear(linear: nn.Linear, weight: torch.Tensor) -> None:
    """Make `linear` read x where it read W x (W: out, in, bias-free): its weight becomes weight @ W.

    A fuser's first linear operation on the deltas D_i = P(a_i) - P(a_0) = W (a_i - a_0) thus
    takes a_i - a_0 directly, and the frozen projection P never runs on the deltas."""
    if getattr(linear, "folded", False):
        raise SamoraError(f"{linear} already holds a folded projection; fold_projection() runs once per fuser")
    if weight.dim() != 2 or weight.shape[0] != linear.in_features:
        raise ValueError(f"cannot fold a projection of shape {tuple(weight.shape)} into {linear}: "
                         f"its output width must be the layer's input width {linear.in_features}")
    with torch.no_grad():
        folded = linear.weight @ weight.to(linear.weight.dtype)
    linear.weight = nn.Parameter(folded, requires_grad=linear.weight.requires_grad)
    linear.in_features = weight.shape[1]
    linear.folded = True
