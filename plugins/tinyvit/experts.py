"""Stage 2 on TinyViT: K frozen LoRA experts fused inside the attention of a TinyViT block, all batched.

Per block: the map cut into windows once (padded before the LayerNorm, as the frozen block does), the
LayerNorm once, the frozen qkv and every expert's q/v delta in one projection + one einsum
(ExpertsQKV.variants), ONE scaled_dot_product_attention call for the K+1 variants (the learned window-offset
bias shared by all), then the frozen output projection folded into the fuser (lora/fusion_step.py):

    x = x + P(a_frozen) + Fuse(D),  D_i = P(a_i) - P(a_frozen);  then local_conv and the MLP once

The fuser sees `valid` (False at padded window tokens); the frozen path, like the shipped model, does not
mask them. A LoraMerger (LoRAHub) instead runs one LoRA whose A, B are the weighted sums.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from samora_kit_plugins.lora.experts_qkv import ExpertsQKV
from samora_kit_plugins.lora.fusion_step import FusionState, fuse_attention, install_attention_experts, window_valid

from .model import TinyViTBlock, window_partition, window_unpartition


class ExpertFusedTinyViTBlock(TinyViTBlock):
    """A TinyViTBlock whose attention runs the frozen path and K experts batched and adds the fused deltas.
    Made from a built block by `install_tinyvit_experts` (the class is swapped in place, so parameter names
    stay `blocks.N.attn...`); adds `fuser`, `fusion` and `scope`."""

    fuser: nn.Module
    fusion: FusionState
    scope: str

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B, H, W, C
        attn = self.attn
        qkv: ExpertsQKV = attn.qkv
        batch, height, width, _ = x.shape
        windows, padded = window_partition(x, self.window_size)  # n, L, C
        tokens = attn.norm(windows)
        if self.fusion.merges:  # LoRAHub: one LoRA from the weighted sums of A and B
            a, b = qkv.merged(self.fuser.mixing_weights())
            q, k, v = qkv.variants(tokens, a, b, include_base=False, shared=True)
            out = attn.proj(attn.attend(q, k, v)[0])
        else:
            q, k, v = qkv.variants(tokens, shared=True)  # K+1 (or 1 when shared), n, L, C
            valid = window_valid(batch, (height, width), self.window_size, window_partition, x.device)
            out = fuse_attention(self, attn.attend(q, k, v), attn.proj, valid)  # n, L, C
        x = x + window_unpartition(out, self.window_size, padded, (height, width))
        return self.convolve_and_mlp(x)


def install_tinyvit_experts(block: TinyViTBlock, names: Sequence[str], rank: int, targets: Sequence[str],
                            fuser: nn.Module) -> ExpertFusedTinyViTBlock:
    """Turn a built (frozen) TinyViT block into an ExpertFusedTinyViTBlock in place and return it."""
    return install_attention_experts(block, ExpertFusedTinyViTBlock, names, rank, targets, fuser)
