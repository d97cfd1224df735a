"""Shape checks shared by the fusers."""

from __future__ import annotations

import torch

from samora_kit.errors import SamoraError


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
