"""LoRA on the fused qkv projection of SAM's and SAM2's attention, SAMed convention (no scaling, no bias)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

QKV_ORDER = ("q", "k", "v")  # layout of the fused attn.qkv output (SAM ViT and SAM2 Hiera alike)


def check_fused_qkv(qkv: nn.Linear, targets: Sequence[str]) -> None:
    """SAM's (and SAM2 Hiera's) attention keeps q, k and v in one Linear(C_in, 3*C_out), layout
    [q|k|v] (C_in == C_out in SAM; they differ at Hiera stage transitions); LoRA targets are some of them."""
    if not isinstance(qkv, nn.Linear) or qkv.out_features % 3:
        raise ValueError(f"expected a fused qkv Linear(C_in, 3*C_out), got {qkv}")
    if not targets or set(targets) - set(QKV_ORDER):
        raise ValueError(f"LoRA targets must be a non-empty subset of q, k, v; got {list(targets)}")


class LoRAQKV(nn.Module):
    """Frozen fused qkv Linear(C_in, 3*C_out) plus B_t(A_t(x)) added to the slice of each target t
    (A_t: C_in -> r, B_t: r -> C_out)."""

    def __init__(self, qkv: nn.Linear, rank: int = 4, targets: Sequence[str] = ("q", "v")) -> None:
        super().__init__()
        check_fused_qkv(qkv, targets)
        self.base = qkv.requires_grad_(False)
        self.rank = rank
        self.targets = tuple(t for t in QKV_ORDER if t in targets)
        dim_in, dim_out = qkv.in_features, qkv.out_features // 3
        self.lora_a = nn.ModuleDict({t: nn.Linear(dim_in, rank, bias=False) for t in self.targets})
        self.lora_b = nn.ModuleDict({t: nn.Linear(rank, dim_out, bias=False) for t in self.targets})
        self.reset_lora()

    def reset_lora(self) -> None:
        # B = 0 makes the wrapped layer equal the frozen one at init
        for t in self.targets:
            nn.init.kaiming_uniform_(self.lora_a[t].weight, a=math.sqrt(5))
            nn.init.zeros_(self.lora_b[t].weight)

    def delta(self, x: torch.Tensor, target: str) -> torch.Tensor:
        return self.lora_b[target](self.lora_a[target](x))  # ..., C_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: ..., C_in (SAM passes B, H, W, C)
        parts = dict(zip(QKV_ORDER, self.base(x).chunk(3, dim=-1)))
        for t in self.targets:
            parts[t] = parts[t] + self.delta(x, t)
        return torch.cat([parts[t] for t in QKV_ORDER], dim=-1)  # ..., 3*C_out

    def extra_repr(self) -> str:
        return f"rank={self.rank}, targets={''.join(self.targets)}"
