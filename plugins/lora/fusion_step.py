"""The stage-2 fusion step that SAM's and SAM2's fused blocks share.

In: the K+1 attention variants of a block *before* its frozen output projection P
(variant 0 the frozen path, variant i expert i). Out: the block's attention output
``P(a_0) + Fuse(D)``, ``D_i = P(a_i) - P(a_0)``.

A fuser with ``fold_projection`` was folded at build time and takes ``a_i - a_0`` directly;
P then runs once per block (on ``a_0``, or on ``a_0 + mix`` for fusers linear in the deltas).
Any other fuser gets the projected deltas (K + 1 projections).

When the block is recording (a logging step), it keeps ``fused_ratio`` = ||Fuse(D)|| /
||P(a_0)|| over its real tokens: how large the fused term has grown against the frozen
attention output it is added to.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from samora_kit.api import LoraMerger, SamoraError

from .experts_qkv import ExpertsQKV


@dataclass
class FusionState:
    """What a fused block carries besides its fuser: whether it merges LoRA instead (a LoraMerger), whether
    the projection is folded, and the probe."""

    merges: bool = False
    folded: bool = False
    recording: bool = False
    fused_ratio: torch.Tensor | None = None


def install_attention_experts(block: nn.Module, fused_class: type, names, rank: int, targets, fuser: nn.Module
                              ) -> nn.Module:
    """Turn a built (frozen) block whose attention has a fused `qkv` and a `proj` into `fused_class` in place
    (its parameter names stay those of the official layout) with the experts on its qkv and `fuser` after its
    attention; the frozen output projection is folded into the fuser when the fuser can take it."""
    check_fuser(fuser, len(names))
    block.attn.qkv = ExpertsQKV(block.attn.qkv, names, rank, targets)
    block.__class__ = fused_class
    fold_fuser(block, fuser, block.attn.proj)
    block.scope = "attention"
    return block


def fold_fuser(block: nn.Module, fuser: nn.Module, projection: nn.Linear | None) -> None:
    """Attach `fuser` (a Fuser or a LoraMerger) to `block`; fold `projection` into a Fuser that can take
    deltas before it."""
    block.fuser = fuser
    block.fusion = FusionState(merges=isinstance(fuser, LoraMerger))
    if projection is not None and not block.fusion.merges and callable(getattr(fuser, "fold_projection", None)):
        if not isinstance(getattr(fuser, "output_before_projection", None), bool):
            raise SamoraError(f"fuser {type(fuser).__name__} has fold_projection() but no boolean attribute "
                              "output_before_projection (True: its output is still before the block's "
                              "projection; False: it is in the block's output space)")
        fuser.fold_projection(projection.weight.detach())
        block.fusion.folded = True


def fuse_attention(block: nn.Module, variants: torch.Tensor, projection: nn.Linear,
                   valid: torch.Tensor | None) -> torch.Tensor:
    """variants: V = K+1, N, L, C_in before `projection` -> N, L, C_out, the block's attention output."""
    fuser, state = block.fuser, block.fusion
    frozen, experts = variants.split([1, variants.shape[0] - 1])  # split, squeeze: no zero-filled gradients
    frozen = frozen.squeeze(0)
    if state.folded:
        fused = run_fuser(fuser, experts - frozen, valid)
        if fuser.output_before_projection:
            out = projection(frozen + fused)
            if state.recording:
                record_ratio(state, F.linear(fused, projection.weight), projection(frozen), valid)
            return out
        frozen_out = projection(frozen)
    else:
        frozen_out, experts_out = projection(variants).split([1, variants.shape[0] - 1])
        frozen_out = frozen_out.squeeze(0)
        fused = run_fuser(fuser, experts_out - frozen_out, valid)
    if state.recording:
        record_ratio(state, fused, frozen_out, valid)
    return frozen_out + fused


def run_fuser(fuser: nn.Module, deltas: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """deltas K, N, L, C -> the fuser's N, L, C (its shape checked)."""
    fused = fuser(deltas, valid=valid)
    if fused.shape != deltas.shape[1:]:
        raise ValueError(f"fuser {type(fuser).__name__} returned shape {tuple(fused.shape)} for deltas "
                         f"{tuple(deltas.shape)}; expected {tuple(deltas.shape[1:])} (N, L, C)")
    return fused


@torch.no_grad()
def record_ratio(state: FusionState, fused: torch.Tensor, frozen: torch.Tensor, valid: torch.Tensor | None) -> None:
    """||fused|| / ||frozen|| over the real tokens (fused, frozen: N, L, C; valid: N, L)."""
    if valid is not None:
        fused, frozen = fused[valid], frozen[valid]
    state.fused_ratio = fused.float().norm() / frozen.float().norm().clamp_min(1e-12)


def window_valid(batch: int, hw: tuple[int, int], window: int, partition, device: torch.device) -> torch.Tensor | None:
    """N, L: True for real tokens of the windows `partition` cuts from a B, H, W map (padding: False);
    None when the windows need no padding (or the block is global)."""
    height, width = hw
    if window <= 0 or (height % window == 0 and width % window == 0):
        return None
    windows, _ = partition(torch.ones(batch, height, width, 1, device=device), window)
    return windows.reshape(windows.shape[0], -1) > 0


def check_fuser(fuser, num_experts: int) -> None:
    name = type(fuser).__name__
    if not isinstance(fuser, nn.Module):
        raise SamoraError(f"the fuser factory returned a {name}, expected an nn.Module "
                          "with forward(deltas[K, N, L, C], valid=None) -> [N, L, C]")
    if isinstance(fuser, LoraMerger):  # LoRAHub: merges the experts' LoRA factors, never sees deltas
        return
    parameters = inspect.signature(fuser.forward).parameters
    if "valid" not in parameters and not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        raise SamoraError(f"fuser {name}.forward must accept the keyword `valid` (N, L bool mask of the real "
                          "tokens, None when nothing is padded): forward(deltas, valid=None)")
