"""HL-Attn: hierarchical sequential cross-attention over the experts' deltas (paper Eq. 8).

Structure (K experts, block width C, inner fusion width w = ``width``, ``heads`` inner heads)::

    h_i   = down(D_i)                               ONE shared Linear C -> w, no norm before it
    r_0   = h[order[0]]                             lowest level (default: pixel)
    r_j   = h[order[j]] + Attn_j(q = LN(h[order[j]]), k = LN(r_{j-1}), v = r_{j-1})   j = 1 .. K-1
    out   = gate * up(r_{K-1})                      Linear w -> C, then a per-channel gate (zeros at init)

``Attn_j`` has its own q/k/v projections (Linear w -> w each, with bias) and runs softmax attention
(``attend``: SDPA, or on the CPU the explicit softmax where measured faster) with ``heads`` heads
over the L tokens of each of the N groups independently (a group is one window of a windowed block,
one image of a global block), so the fuser never mixes tokens of different groups; ``valid`` (N, L)
masks padded window tokens out of every key/value set. There is no per-step output projection: the next
step's k/v projections, and at the end ``up``, mix the heads. Higher level queries, lower
level answers: with the default order ``pixel -> patch -> image`` step 1 is "patch asks pixel",
step 2 "image asks the result".

Scale reaches the fuser: the deltas enter ``down`` as they are (a LayerNorm there would set
every expert to unit size however weak or strong it is). LayerNorms sit only on the inputs of
the attention logits (q and k, in the fuser's width); the values and the residual carry the
experts' own scale to ``up``.

Identity at start, bounded after: ``gate`` (LayerScale/ReZero) starts at ``gate_init`` = 0,
so the fused delta is exactly 0 at initialisation and step 0 of stage 2 equals the frozen SAM
path; ``up`` has a normal Linear init, so the gate gets a gradient from the first step. The
block logs ||fused|| / ||frozen attention output|| so the growth can be watched.

Before the projection (scope ``attention``): the backbone calls ``fold_projection(W)`` once with
the block's frozen output projection ``P(a) = W a + b``; from then on ``forward`` receives
``d_i = a_i - a_0`` (the experts' attention outputs before ``P``) and ``down`` holds
``W_down @ W``, so ``down(d_i) = W_down (P(a_i) - P(a_0)) + b_down`` exactly and ``P`` runs
once per block instead of K + 1 times. The output is in the block's output space
(``output_before_projection = False``).

Parameters (LayerNorms with affine weight+bias, Linears with bias)::

    P = C*w + w                      (down)
      + (K-1) * (4w + 3*(w*w + w))   (per step: LN on q and on k, then q, k, v)
      + w*C + C                      (up)
      + C                            (gate)
      = 2*C*w + 2*C + w + (K-1) * (3*w*w + 7*w)

ViT-B defaults (C=768, w=256, K=3): 791,808 per block, 9,501,696 for 12 blocks, matching the
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

from samora_kit.api import ComponentConfig, SamoraError

from .common import check_deltas, check_expert_names, fold_into_linear


class HLAttnConfig(ComponentConfig):
    order: list[str] = Field(default_factory=lambda: ["pixel", "patch", "image"])  # lowest level first
    width: int = Field(256, ge=1)  # inner fusion width
    heads: int = Field(8, ge=1)  # inner attention heads; must divide width
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # attention-probability dropout (training only)
    gate_init: float = 0.0  # initial value of the per-channel output gate (0: stage 2 starts on the frozen path)


def hl_attn_parameter_count(dim: int, width: int = 256, num_experts: int = 3) -> int:
    """Trainable parameters of one block's HL-Attn (the formula in the module docstring)."""
    return 2 * dim * width + 2 * dim + width + (num_experts - 1) * (3 * width * width + 7 * width)


# Up to how many tokens the CPU keeps the explicit softmax for the fuser's attention (width / heads = 32
# per head), by (dtype, gradient through attention); any other case takes SDPA. Measured (docs/decisions.md,
# "Attention kernel"): SDPA wins fp32 everywhere and bf16 inference, its bf16 backward loses up to 784 tokens.
CPU_EXPLICIT_MAX_TOKENS = {(torch.bfloat16, True): 784}


class CrossAttentionStep(nn.Module):
    """Query tokens (higher level) attend to key/value tokens (lower level) of the same group."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.q_norm = nn.LayerNorm(width)
        self.k_norm = nn.LayerNorm(width)
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(width, width)
        self.v = nn.Linear(width, width)

    def forward(self, query: torch.Tensor, lower: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        n, l, w = query.shape  # N, L, w

        def split(t: torch.Tensor) -> torch.Tensor:  # N, L, w -> N, heads, L, w/heads
            return t.view(n, l, self.heads, w // self.heads).transpose(1, 2)

        mask = None if valid is None else valid[:, None, None, :]  # N, 1, 1, L: padded keys never answer
        attn = attend(split(self.q(self.q_norm(query))), split(self.k(self.k_norm(lower))), split(self.v(lower)),
                      mask, self.dropout if self.training else 0.0)
        return query + attn.transpose(1, 2).reshape(n, l, w)  # residual on the query


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout: float,
           fused: bool | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d), keys where `mask` is False left out) v; q, k, v: N, heads, L, d.

    `fused` None picks the kernel by `fused_kernel_pays`; True / False force SDPA / the explicit softmax
    (benchmarks/samora_benchmarks/attention.py compares the two)."""
    if fused is None:
        fused = fused_kernel_pays(q, q.shape[-2], torch.is_grad_enabled() and q.requires_grad)
    if fused:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    logits = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.matmul(F.dropout(probs, dropout) if dropout else probs, v)


def fused_kernel_pays(like: torch.Tensor, length: int, needs_grad: bool) -> bool:
    """Whether SDPA beats the explicit softmax for the fuser's attention over `length` tokens on `like`'s
    device: always on an accelerator, above CPU_EXPLICIT_MAX_TOKENS on the CPU."""
    return like.device.type != "cpu" or length > CPU_EXPLICIT_MAX_TOKENS.get((like.dtype, needs_grad), 0)


class HLAttn(nn.Module):
    """Fused delta N, L, C of K expert deltas K, N, L, C; exactly zero at initialisation."""

    output_before_projection = False  # `up` maps to the block's output space

    def __init__(self, dim: int, expert_names: list[str], order: list[str], width: int = 256, heads: int = 8,
                 dropout: float = 0.0, gate_init: float = 0.0) -> None:
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
        self.down = nn.Linear(dim, width)
        self.steps = nn.ModuleList(CrossAttentionStep(width, heads, dropout) for _ in range(self.num_experts - 1))
        self.up = nn.Linear(width, dim)
        self.gate = nn.Parameter(torch.full((dim,), float(gate_init)))

    def fold_projection(self, weight: torch.Tensor) -> None:
        """From now on take deltas before the block's frozen output projection (weight: C, C_in)."""
        fold_into_linear(self.down, weight)

    def forward(self, deltas: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        check_deltas("hl_attn", deltas, self.num_experts, self.down.in_features, exact_4d=True)
        h = self.down(deltas).unbind(0)  # K x (N, L, w): one batched call for every expert
        result = h[self.order_index[0]]
        for step, index in zip(self.steps, self.order_index[1:]):
            result = step(h[index], result, valid)  # higher level queries, lower level answers
        return self.gate.to(result.dtype) * self.up(result)  # N, L, C

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
    return HLAttn(dim, list(expert_names), list(config.order), config.width, config.heads, config.dropout,
                  config.gate_init)
