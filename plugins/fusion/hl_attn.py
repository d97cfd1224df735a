"""HL-Attn: hierarchical sequential cross-attention over the experts' deltas (paper Eq. 8).

Structure (K experts, block width C, inner fusion width w = ``width``, ``heads`` inner heads)::

    h_i   = down(LN_C(D_i))                       shared LayerNorm(C) + ONE shared Linear C -> w
    r_0   = h[order[0]]                           lowest level (default: pixel)
    r_j   = h[order[j]] + CrossAttn_j(q = h[order[j]], kv = LN_w^j(r_{j-1}))     j = 1 .. K-1
    out   = up(r_{K-1})                           ONE Linear w -> C, weight and bias zero-initialised

``CrossAttn_j`` has its own q/k/v projections (Linear w -> w each, with bias) and runs
``scaled_dot_product_attention`` with ``heads`` heads over the L tokens of each of the N
groups independently (a group is one window of a windowed block, one image of a global
block), so the fuser is window-aware and never mixes tokens of different groups.
There is no per-step output projection: the next step's k/v projections, and at the end
``up``, mix the heads. Higher level queries, lower level answers: with the default order
``pixel -> patch -> image`` step 1 is "patch asks pixel", step 2 "image asks the result".

Identity at start: ``up`` is zero, so the fused delta is exactly 0 at initialisation and
step 0 of stage 2 equals the frozen SAM path (only ``up`` receives a non-zero gradient on
the first step; the rest wakes up once ``up`` moved).

Parameters (LayerNorms with affine weight+bias, Linears with bias)::

    P = 2C            (LN_C)
      + C*w + w       (down)
      + (K-1) * (2w + 3*(w*w + w))   (per step: LN_w on the key/value input + q, k, v)
      + w*C + C       (up)
      = 2*C*w + 3*C + w + (K-1) * (3*w*w + 5*w)

ViT-B defaults (C=768, w=256, K=3): 791,552 per block, 9,498,624 for 12 blocks, matching the
paper's +9.7 M of SAMora (118.5 M) over SAMed (108.8 M) minus ~0.3 M of extra expert LoRAs.
(The authors' 768-wide code spends ~5.9 M per block, ~71 M in all.)

``num_heads`` (the block's head count) is accepted for the common factory signature but the
inner attention uses ``config.heads``, which must divide ``config.width``.
K = 1 is refused (nothing to fuse hierarchically; use the ``sum`` or ``lac`` fuser).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from samora_kit.errors import SamoraError
from samora_kit.registry import ComponentConfig

from .common import check_deltas, check_expert_names


class HLAttnConfig(ComponentConfig):
    order: list[str] = Field(default_factory=lambda: ["pixel", "patch", "image"])  # lowest level first
    width: int = Field(256, ge=1)  # inner fusion width
    heads: int = Field(8, ge=1)  # inner attention heads; must divide width
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # attention-probability dropout (training only)


def hl_attn_parameter_count(dim: int, width: int = 256, num_experts: int = 3) -> int:
    """Trainable parameters of one block's HL-Attn (the formula in the module docstring)."""
    return 2 * dim * width + 3 * dim + width + (num_experts - 1) * (3 * width * width + 5 * width)


class CrossAttentionStep(nn.Module):
    """Query tokens (higher level) attend to key/value tokens (lower level) of the same group."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.kv_norm = nn.LayerNorm(width)
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(width, width)
        self.v = nn.Linear(width, width)

    def forward(self, query: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
        n, l, w = query.shape  # N, L, w
        kv = self.kv_norm(lower)  # N, L, w

        def split(t: torch.Tensor) -> torch.Tensor:  # N, L, w -> N, heads, L, w/heads
            return t.view(n, l, self.heads, w // self.heads).transpose(1, 2)

        attn = F.scaled_dot_product_attention(split(self.q(query)), split(self.k(kv)), split(self.v(kv)),
                                              dropout_p=self.dropout if self.training else 0.0)
        return query + attn.transpose(1, 2).reshape(n, l, w)  # residual on the query


class HLAttn(nn.Module):
    """Fused delta N, L, C of K expert deltas K, N, L, C; exactly zero at initialisation."""

    merges_lora = False

    def __init__(self, dim: int, expert_names: list[str], order: list[str], width: int = 256, heads: int = 8,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.expert_names = check_expert_names("hl_attn", expert_names)
        if len(self.expert_names) < 2:
            raise SamoraError(f"fuser 'hl_attn' needs at least 2 experts to fuse, got {self.expert_names}; "
                              "with one expert use the 'sum' or 'lac' fuser")
        self.order = tuple(validate_order(order, self.expert_names))
        if width % heads:
            raise SamoraError(f"fuser 'hl_attn': heads ({heads}) must divide width ({width})")
        self.num_experts = len(self.expert_names)
        self.dim = dim
        self.order_index = tuple(self.expert_names.index(name) for name in self.order)
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, width)
        self.steps = nn.ModuleList(CrossAttentionStep(width, heads, dropout) for _ in range(self.num_experts - 1))
        self.up = nn.Linear(width, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, deltas: torch.Tensor) -> torch.Tensor:
        check_deltas("hl_attn", deltas, self.num_experts, self.dim, exact_4d=True)
        h = self.down(self.norm(deltas)).unbind(0)  # K x (N, L, w): one batched call for every expert
        result = h[self.order_index[0]]
        for step, index in zip(self.steps, self.order_index[1:]):
            result = step(h[index], result)  # higher level queries, lower level answers
        return self.up(result)  # N, L, C

    def extra_repr(self) -> str:
        return f"order={' -> '.join(self.order)}"


def validate_order(order: list[str], expert_names: list[str]) -> list[str]:
    """`order` must be a permutation of `expert_names`; errors name the offending entry."""
    known = ", ".join(repr(n) for n in expert_names)
    for name in order:
        if name not in expert_names:
            raise SamoraError(f"fuser 'hl_attn': order entry {name!r} is not an expert of this backbone "
                              f"(experts: {known}); order must be a permutation of the expert names")
    for name in order:
        if order.count(name) > 1:
            raise SamoraError(f"fuser 'hl_attn': order entry {name!r} appears {order.count(name)} times; "
                              f"order must be a permutation of {known}")
    for name in expert_names:
        if name not in order:
            raise SamoraError(f"fuser 'hl_attn': expert {name!r} is missing from order {list(order)}; "
                              f"order must be a permutation of {known}")
    return list(order)


def build_hl_attn(config: HLAttnConfig, *, dim: int, num_heads: int, expert_names: list[str]) -> HLAttn:
    """HL-Attn: sequential cross-attention of the expert deltas, lowest level first (paper Eq. 8)."""
    del num_heads  # the inner attention uses config.heads over config.width
    return HLAttn(dim, list(expert_names), list(config.order), config.width, config.heads, config.dropout)
