"""Stage 2 on SAM2: K frozen LoRA experts fused inside a Hiera block, all variants batched.

Per block: norm1 once, the (pooled) shortcut once, window partition once, the frozen qkv and every
expert's deltas in one projection + one einsum (ExpertsQKV.variants), q-pooling per q variant,
ONE scaled_dot_product_attention call for all K+1 variants [frozen, frozen+Δ_1, ..., frozen+Δ_K],
then (scope "attention", as SAM's ExpertFusedBlock, lora/fusion_step.py) the frozen output
projection folded into the fuser, so it runs once per block:

    x = shortcut + P(a_frozen) + Fuse(D),  D_i = P(a_i) - P(a_frozen);  x = x + mlp(norm2(x))

A LoraMerger (LoRAHub) instead runs one LoRA whose A, B are the weighted sums.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from sam2.modeling.backbones.hieradet import MultiScaleAttention, MultiScaleBlock, do_pool
from sam2.modeling.backbones.utils import window_partition, window_unpartition
from torch import nn

from samora_kit_plugins.lora.experts_qkv import ExpertsQKV
from samora_kit_plugins.lora.fusion_step import FusionState, fuse_attention, install_attention_experts, window_valid


def hiera_variants_attention(attn: MultiScaleAttention, q: torch.Tensor, k: torch.Tensor,
                             v: torch.Tensor) -> torch.Tensor:
    """Hiera's MultiScaleAttention after its qkv projection, for V variants in one SDPA call.

    q, k, v: V or 1 (shared by every variant), n, h, w, C_out -> V, n, h', w', C_out before
    `attn.proj` (h', w' = h, w pooled by `attn.q_pool` when the block downsamples)."""
    count = max(q.shape[0], k.shape[0], v.shape[0])
    _, n, h, w, dim = k.shape
    heads = attn.num_heads
    if attn.q_pool is not None:  # pool each q variant (a shared q once)
        pooled = do_pool(q.reshape(q.shape[0] * n, h, w, dim), attn.q_pool)
        hq, wq = pooled.shape[1:3]
        q = pooled.view(q.shape[0], n, hq, wq, dim)
    hq, wq = q.shape[2:4]

    def heads_first(t: torch.Tensor) -> torch.Tensor:  # V', n, a, b, C -> count * n, heads, a*b, C/heads
        length = t.shape[2] * t.shape[3]
        t = t.expand(count, -1, -1, -1, -1).reshape(count * n, length, heads, dim // heads)
        return t.transpose(1, 2)

    out = F.scaled_dot_product_attention(heads_first(q), heads_first(k), heads_first(v))
    return out.transpose(1, 2).reshape(count, n, hq, wq, dim)


class ExpertFusedHieraBlock(MultiScaleBlock):
    """A sam2 MultiScaleBlock whose forward runs the frozen path and K experts batched and adds
    the fused expert deltas. Made from a built block by `install_hiera_experts` (the class is swapped
    in place, so parameter names stay `blocks.N.norm1...`); adds `fuser`, `fusion` and `scope`."""

    fuser: nn.Module
    fusion: FusionState
    scope: str

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B, H, W, C_in -> B, H', W', C_out
        qkv: ExpertsQKV = self.attn.qkv
        shortcut = x
        tokens = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = do_pool(self.proj(tokens), self.pool)
        height, width = tokens.shape[1:3]
        window = self.window_size
        if window > 0:
            tokens, pad_hw = window_partition(tokens, window)

        if self.fusion.merges:  # LoRAHub: one LoRA from the weighted sums of A and B
            a, b = qkv.merged(self.fuser.mixing_weights())
            q, k, v = qkv.variants(tokens, a, b, include_base=False, shared=True)
        else:
            q, k, v = qkv.variants(tokens, shared=True)  # K+1 (or 1 when shared), n, h, w, C_out
        out = hiera_variants_attention(self.attn, q, k, v)  # V, n, h', w', C_out before the projection

        if self.q_stride:  # shapes changed by q-pooling
            window = self.window_size // self.q_stride[0]
            height, width = shortcut.shape[1:3]
            if window > 0:
                pad_hw = (height + (window - height % window) % window, width + (window - width % window) % window)
        if self.fusion.merges:
            attn_out = self.attn.proj(out[0])
        else:
            count, n, h, w, dim = out.shape
            valid = window_valid(shortcut.shape[0], (height, width), window, window_partition, x.device)
            attn_out = fuse_attention(self, out.reshape(count, n, h * w, dim), self.attn.proj, valid)
            attn_out = attn_out.view(n, h, w, dim)
        if self.window_size > 0:
            attn_out = window_unpartition(attn_out, window, pad_hw, (height, width))
        x = shortcut + self.drop_path(attn_out)
        return x + self.drop_path(self.mlp(self.norm2(x)))


def install_hiera_experts(block: MultiScaleBlock, names: Sequence[str], rank: int, targets: Sequence[str],
                          fuser: nn.Module) -> ExpertFusedHieraBlock:
    """Turn a built (frozen) Hiera block into an ExpertFusedHieraBlock in place and return it."""
    return install_attention_experts(block, ExpertFusedHieraBlock, names, rank, targets, fuser)
