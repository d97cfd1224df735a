"""Stage 2: K frozen LoRA experts fused inside a SAM encoder block, all variants batched.

Per block: norm1 once, window partition once, the frozen qkv once, every expert's q/v
delta in one pair of einsums; the K+1 qkv variants [base, base+Δ_1, ..., base+Δ_K] go
through ONE batched attention (variant_attention.py). F = variant 0, D_i = variant i -
variant 0, and the fuser returns Fuse(D) which is added to F:

* scope "attention": D are attention-branch outputs per token group (windows or all
  tokens), x' = x + F_attn + Fuse(D), then the MLP once. The frozen output projection P is
  folded into the fuser (lora/fusion_step.py), so it runs once, not K+1 times.
* scope "block": every variant also runs residual + MLP (batched); D_i = E_i(x) - F(x)
  on the block output, grouped into windows (windowed blocks) or all tokens (global).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from segment_anything.modeling.image_encoder import Block, window_partition, window_unpartition
from torch import nn

from samora_kit_plugins.lora.experts_qkv import ExpertsQKV
from samora_kit_plugins.lora.fusion_step import (FusionState, check_fuser, fold_fuser, fuse_attention, record_ratio,
                                                 run_fuser, window_valid)

from .rel_pos_attention import fused_kernel_pays
from .variant_attention import low_rank_variants_attention, variants_attention

SCOPES = ("attention", "block")
LOW_RANK_LOGITS = True  # where the CPU keeps explicit logits; benchmarks switch it off to measure what it saves


class ExpertFusedBlock(Block):
    """A segment-anything Block whose forward runs the frozen path and K experts batched and
    adds the fused expert deltas. Made from a built Block by `install_experts` (the class is
    swapped in place, so parameter names stay `blocks.N.norm1...`); adds `fuser`, `fusion`, `scope`."""

    fuser: nn.Module
    fusion: FusionState
    scope: str

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B, H, W, C
        qkv: ExpertsQKV = self.attn.qkv
        shortcut = x
        batch, height, width, dim = x.shape
        tokens = self.norm1(x)
        pad_hw = (height, width)
        if self.window_size > 0:
            tokens, pad_hw = window_partition(tokens, self.window_size)
        n, h, w, _ = tokens.shape  # n = batch * windows (windowed) or batch (global)

        needs_grad = torch.is_grad_enabled() and tokens.requires_grad  # frozen experts: only through the input
        if (qkv.low_rank_q and LOW_RANK_LOGITS and not self.fusion.merges
                and not fused_kernel_pays(tokens, h * w, needs_grad, low_rank=True)):
            q0, u, b, k, v = qkv.factored_variants(tokens.reshape(n, h * w, dim))  # explicit rank-r logits
            out = low_rank_variants_attention(self.attn, q0, u, b, k, v, (h, w))
        else:
            if self.fusion.merges:  # LoRAHub: one LoRA from the weighted sums of A and B
                a, b = qkv.merged(self.fuser.mixing_weights())
                q, k, v = qkv.variants(tokens, a, b, include_base=False, shared=True)
            else:
                q, k, v = qkv.variants(tokens, shared=True)  # K+1 (or 1 when shared), n, h, w, C
            out = variants_attention(self.attn, *(t.reshape(t.shape[0], n, h * w, dim) for t in (q, k, v)), (h, w))
        count = out.shape[0]  # V, n, L, C before the output projection

        if self.fusion.merges:
            x = shortcut + self._unpartition(self.attn.proj(out[0]).view(n, h, w, dim), pad_hw, (height, width))
            return x + self.mlp(self.norm2(x))

        if self.scope == "attention":
            valid = window_valid(batch, (height, width), self.window_size, window_partition, x.device)
            attn_out = fuse_attention(self, out, self.attn.proj, valid)  # n, L, C
            x = shortcut + self._unpartition(attn_out.view(n, h, w, dim), pad_hw, (height, width))
            return x + self.mlp(self.norm2(x))

        # scope "block": residual + MLP per variant, batched
        attn_out = self._unpartition(self.attn.proj(out).view(count * n, h, w, dim), pad_hw, (height, width))
        blocks = shortcut + attn_out.view(count, batch, height, width, dim)
        blocks = blocks + self.mlp(self.norm2(blocks))
        frozen, experts_out = blocks.split([1, count - 1])
        frozen, deltas = frozen[0], experts_out - frozen  # K, B, H, W, C
        experts = count - 1
        if self.window_size > 0:
            windows, pad = window_partition(deltas.reshape(experts * batch, height, width, dim), self.window_size)
            per_expert = windows.shape[0] // experts
            valid = window_valid(batch, (height, width), self.window_size, window_partition, x.device)
            fused = run_fuser(self.fuser, windows.reshape(experts, per_expert, -1, dim), valid)
            fused = window_unpartition(fused.view(per_expert, self.window_size, self.window_size, dim),
                                       self.window_size, pad, (height, width))
        else:
            fused = run_fuser(self.fuser, deltas.reshape(experts, batch, height * width, dim), None)
            fused = fused.view(batch, height, width, dim)
        if self.fusion.recording:  # against what the frozen block adds to its input
            record_ratio(self.fusion, fused, frozen - shortcut, None)
        return frozen + fused

    def _unpartition(self, x: torch.Tensor, pad_hw: tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
        return window_unpartition(x, self.window_size, pad_hw, hw) if self.window_size > 0 else x


def install_experts(block: Block, names: Sequence[str], rank: int, targets: Sequence[str],
                    fuser: nn.Module, scope: str = "attention") -> ExpertFusedBlock:
    """Turn a built (frozen) SAM Block into an ExpertFusedBlock in place and return it. With scope
    "attention" the block's frozen output projection is folded into the fuser when it can take it."""
    if scope not in SCOPES:
        raise ValueError(f"experts scope must be one of {', '.join(SCOPES)}; got {scope!r}")
    check_fuser(fuser, len(names))
    block.attn.qkv = ExpertsQKV(block.attn.qkv, names, rank, targets)
    block.__class__ = ExpertFusedBlock
    fold_fuser(block, fuser, block.attn.proj if scope == "attention" else None)
    block.scope = scope
    return block
