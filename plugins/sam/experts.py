"""Stage 2: K frozen LoRA experts fused inside a SAM encoder block, all variants batched.

Per block: norm1 once, window partition once, the frozen qkv once, every expert's q/v
delta in one pair of einsums; the K+1 qkv variants [base, base+Δ_1, ..., base+Δ_K] go
through ONE attention call (SDPA, decomposed relative positions as an additive float
mask) and ONE output projection. F = variant 0, D_i = variant i - variant 0, and the
fuser returns Fuse(D) which is added to F:

* scope "attention": D are attention-branch outputs per token group (windows or all
  tokens), x' = x + F_attn + Fuse(D), then the MLP once.
* scope "block": every variant also runs residual + MLP (batched); D_i = E_i(x) - F(x)
  on the block output, grouped into windows (windowed blocks) or all tokens (global).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, Block, get_rel_pos, window_partition, \
    window_unpartition
from torch import nn

from samora_kit.errors import SamoraError

from .lora import QKV_ORDER, check_fused_qkv

# (dim, num_heads, expert_names) -> fuser module; called once per expert block
FuserFactory = Callable[[int, int, list[str]], nn.Module]
SCOPES = ("attention", "block")


class ExpertsQKV(nn.Module):
    """SAM's frozen fused qkv Linear plus K frozen LoRA experts, stacked for batched deltas.

    Buffers `expert_a` (T, K, r, C) and `expert_b` (T, K, C, r), T = targets in q, k, v
    order, K = experts in `names` order. Calling the module gives the frozen qkv only;
    the fused block asks for the variants."""

    def __init__(self, qkv: nn.Linear, names: Sequence[str], rank: int = 4,
                 targets: Sequence[str] = ("q", "v")) -> None:
        super().__init__()
        check_fused_qkv(qkv, targets)
        self.base = qkv.requires_grad_(False)
        self.names = tuple(names)
        self.rank = rank
        self.targets = tuple(t for t in QKV_ORDER if t in targets)
        dim = qkv.in_features
        self.register_buffer("expert_a", torch.empty(len(self.targets), len(self.names), rank, dim))
        self.register_buffer("expert_b", torch.zeros(len(self.targets), len(self.names), dim, rank))
        self.reset_experts()

    @property
    def num_experts(self) -> int:
        return len(self.names)

    def reset_experts(self) -> None:
        """SAMed init per expert: A Kaiming-uniform (as nn.Linear(C, r)), B zero."""
        with torch.no_grad():
            for t in range(len(self.targets)):
                for k in range(self.num_experts):
                    nn.init.kaiming_uniform_(self.expert_a[t, k], a=math.sqrt(5))
            self.expert_b.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x)  # the frozen projection; experts enter through `variants`

    def deltas(self, x: torch.Tensor, a: torch.Tensor | None = None, b: torch.Tensor | None = None) -> torch.Tensor:
        """x: ..., C -> T, K, ..., C: B_tk A_tk x for every target t and expert k at once."""
        a = self.expert_a if a is None else a
        b = self.expert_b if b is None else b
        lead, dim = x.shape[:-1], x.shape[-1]
        hidden = torch.einsum("nc,tkrc->tknr", x.reshape(-1, dim), a.to(x.dtype))
        out = torch.einsum("tknr,tkcr->tknc", hidden, b.to(x.dtype))
        return out.reshape(*out.shape[:2], *lead, out.shape[-1])

    def variants(self, x: torch.Tensor, a: torch.Tensor | None = None, b: torch.Tensor | None = None,
                 include_base: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v each V, ..., C: [frozen, frozen + Δ_1, ..., frozen + Δ_K] (V = K + 1),
        or only the expert variants when include_base is False."""
        parts = self.base(x).chunk(3, dim=-1)
        deltas = self.deltas(x, a, b)
        count = deltas.shape[1] + int(include_base)
        out = []
        for name, part in zip(QKV_ORDER, parts):
            part = part.unsqueeze(0)
            if name in self.targets:
                varied = part + deltas[self.targets.index(name)]
                out.append(torch.cat([part, varied]) if include_base else varied)
            else:
                out.append(part.expand(count, *part.shape[1:]))
        return out[0], out[1], out[2]

    def merged(self, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One LoRA with A = Σ_k w_k A_k and B = Σ_k w_k B_k (LoRAHub), shaped T, 1, r, C / T, 1, C, r."""
        if weights.shape != (self.num_experts,):
            raise ValueError(f"mixing_weights() must return {self.num_experts} weights (one per expert "
                             f"{list(self.names)}), got shape {tuple(weights.shape)}")
        w = weights.to(self.expert_a.dtype)
        a = torch.einsum("k,tkrc->trc", w, self.expert_a).unsqueeze(1)
        b = torch.einsum("k,tkcr->tcr", w, self.expert_b).unsqueeze(1)
        return a, b

    def expert_state(self, name: str) -> dict[str, torch.Tensor]:
        """One expert's tensors keyed as LoRAQKV names them (`lora_a.q.weight`, ...)."""
        k = self._index(name)
        state = {}
        for t, target in enumerate(self.targets):
            state[f"lora_a.{target}.weight"] = self.expert_a[t, k].detach().clone()
            state[f"lora_b.{target}.weight"] = self.expert_b[t, k].detach().clone()
        return state

    def load_expert(self, name: str, state: dict[str, torch.Tensor]) -> None:
        k = self._index(name)
        with torch.no_grad():
            for t, target in enumerate(self.targets):
                self.expert_a[t, k].copy_(state[f"lora_a.{target}.weight"])
                self.expert_b[t, k].copy_(state[f"lora_b.{target}.weight"])

    def _index(self, name: str) -> int:
        if name not in self.names:
            raise KeyError(f"no expert named {name!r}; experts are {list(self.names)}")
        return self.names.index(name)

    def extra_repr(self) -> str:
        return f"experts={list(self.names)}, rank={self.rank}, targets={''.join(self.targets)}"


def rel_pos_bias(q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                 hw: tuple[int, int]) -> torch.Tensor:
    """SAM's decomposed relative-position term as a tensor to add to the logits.

    q: M, L, head_dim (unscaled, L = h*w) -> M, L, L (== add_decomposed_rel_pos(0, q, ...))."""
    h, w = hw
    rh = get_rel_pos(h, h, rel_pos_h)
    rw = get_rel_pos(w, w, rel_pos_w)
    r_q = q.reshape(q.shape[0], h, w, q.shape[-1])
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh.to(q.dtype))
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw.to(q.dtype))
    return (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(q.shape[0], h * w, h * w)


def sdpa_attention(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   hw: tuple[int, int]) -> torch.Tensor:
    """SAM's Attention after its qkv projection, via scaled_dot_product_attention.

    q, k, v: M, L, C (L = h*w tokens of one window or image) -> M, L, C after `attn.proj`."""
    m, length, dim = q.shape
    heads = attn.num_heads
    q, k, v = (t.reshape(m, length, heads, dim // heads).transpose(1, 2) for t in (q, k, v))
    mask = None
    if attn.use_rel_pos:
        mask = rel_pos_bias(q.reshape(m * heads, length, -1), attn.rel_pos_h, attn.rel_pos_w, hw)
        mask = mask.view(m, heads, length, length)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale)
    return attn.proj(out.transpose(1, 2).reshape(m, length, dim))


def sam_attention_sdpa(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """Drop-in for `Attention.forward` (x: B, H, W, C) computed with SDPA."""
    b, h, w, c = x.shape
    q, k, v = attn.qkv(x).reshape(b, h * w, 3 * c).chunk(3, dim=-1)
    return sdpa_attention(attn, q, k, v, (h, w)).view(b, h, w, c)


class ExpertFusedBlock(Block):
    """A segment-anything Block whose forward runs the frozen path and K experts batched and
    adds the fused expert deltas. Made from a built Block by `install_experts` (the class is
    swapped in place, so parameter names stay `blocks.N.norm1...`); adds `fuser`, `scope`."""

    fuser: nn.Module
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

        if self.fuser.merges_lora:  # LoRAHub: one LoRA from the weighted sums of A and B
            a, b = qkv.merged(self.fuser.mixing_weights())
            q, k, v = qkv.variants(tokens, a, b, include_base=False)
        else:
            q, k, v = qkv.variants(tokens)  # K+1, n, h, w, C
        count = q.shape[0]
        out = sdpa_attention(self.attn, *(t.reshape(count * n, h * w, dim) for t in (q, k, v)), (h, w))

        if self.fuser.merges_lora:
            x = shortcut + self._unpartition(out.view(n, h, w, dim), pad_hw, (height, width))
            return x + self.mlp(self.norm2(x))

        if self.scope == "attention":
            out = out.view(count, n, h * w, dim)
            attn_out = out[0] + self._fuse(out[1:] - out[0])  # n, L, C
            x = shortcut + self._unpartition(attn_out.view(n, h, w, dim), pad_hw, (height, width))
            return x + self.mlp(self.norm2(x))

        # scope "block": residual + MLP per variant, batched
        attn_out = self._unpartition(out.view(count * n, h, w, dim), pad_hw, (height, width))
        blocks = shortcut + attn_out.view(count, batch, height, width, dim)
        blocks = blocks + self.mlp(self.norm2(blocks))
        frozen, deltas = blocks[0], blocks[1:] - blocks[0]  # K, B, H, W, C
        experts = count - 1
        if self.window_size > 0:
            windows, pad = window_partition(deltas.reshape(experts * batch, height, width, dim), self.window_size)
            per_expert = windows.shape[0] // experts
            fused = self._fuse(windows.reshape(experts, per_expert, -1, dim))
            fused = window_unpartition(fused.view(per_expert, self.window_size, self.window_size, dim),
                                       self.window_size, pad, (height, width))
        else:
            fused = self._fuse(deltas.reshape(experts, batch, height * width, dim)).view(batch, height, width, dim)
        return frozen + fused

    def _unpartition(self, x: torch.Tensor, pad_hw: tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
        return window_unpartition(x, self.window_size, pad_hw, hw) if self.window_size > 0 else x

    def _fuse(self, deltas: torch.Tensor) -> torch.Tensor:
        fused = self.fuser(deltas)
        if fused.shape != deltas.shape[1:]:
            raise ValueError(f"fuser {type(self.fuser).__name__} returned shape {tuple(fused.shape)} for deltas "
                             f"{tuple(deltas.shape)}; expected {tuple(deltas.shape[1:])} (N, L, C)")
        return fused


def install_experts(block: Block, names: Sequence[str], rank: int, targets: Sequence[str],
                    fuser: nn.Module, scope: str = "attention") -> ExpertFusedBlock:
    """Turn a built (frozen) SAM Block into an ExpertFusedBlock in place and return it."""
    if scope not in SCOPES:
        raise ValueError(f"experts scope must be one of {', '.join(SCOPES)}; got {scope!r}")
    check_fuser(fuser, len(names))
    block.attn.qkv = ExpertsQKV(block.attn.qkv, names, rank, targets)
    block.__class__ = ExpertFusedBlock
    block.fuser = fuser
    block.scope = scope
    return block


def check_fuser(fuser, num_experts: int) -> None:
    name = type(fuser).__name__
    if not isinstance(fuser, nn.Module):
        raise SamoraError(f"the fuser factory returned a {name}, expected an nn.Module "
                          "with forward(deltas[K, N, L, C]) -> [N, L, C]")
    if not isinstance(getattr(fuser, "merges_lora", None), bool):
        raise SamoraError(f"fuser {name} has no boolean attribute merges_lora (False: it fuses deltas; "
                          "True: it merges the experts' LoRA through mixing_weights())")
    if fuser.merges_lora and not callable(getattr(fuser, "mixing_weights", None)):
        raise SamoraError(f"fuser {name} sets merges_lora but has no mixing_weights() -> Tensor[{num_experts}]")
