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
    """A frozen fused qkv Linear(C_in, 3*C_out) plus K frozen LoRA experts, stacked for batched deltas.

    Buffers `expert_a` (T, K, r, C_in) and `expert_b` (T, K, C_out, r), T = targets in q, k, v
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
        self.dim_out = qkv.out_features // 3
        self.register_buffer("expert_a", torch.empty(len(self.targets), len(self.names), rank, qkv.in_features))
        self.register_buffer("expert_b", torch.zeros(len(self.targets), len(self.names), self.dim_out, rank))
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
        """x: ..., C_in -> T, K, ..., C_out: B_tk A_tk x for every target t and expert k at once."""
        a = self.expert_a if a is None else a
        b = self.expert_b if b is None else b
        lead, dim = x.shape[:-1], x.shape[-1]
        hidden = torch.einsum("nc,tkrc->tknr", x.reshape(-1, dim), a.to(x.dtype))
        out = torch.einsum("tknr,tkcr->tknc", hidden, b.to(x.dtype))
        return out.reshape(*out.shape[:2], *lead, out.shape[-1])

    def variants(self, x: torch.Tensor, a: torch.Tensor | None = None, b: torch.Tensor | None = None,
                 include_base: bool = True, shared: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: ..., C_in -> q, k, v each V, ..., C_out: [frozen, frozen + Δ_1, ..., frozen + Δ_K] (V = K + 1),
        or only the expert variants when include_base is False. With `shared`, a projection
        no expert changes is returned once, 1, ..., C, instead of expanded to V."""
        a = self.expert_a if a is None else a
        b = self.expert_b if b is None else b
        if include_base:  # a zero expert first: variant 0 is base + 0, exactly the frozen path, no cat
            a = F.pad(a, (0, 0, 0, 0, 1, 0))
            b = F.pad(b, (0, 0, 0, 0, 1, 0))
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        parts = self.base(flat).chunk(3, dim=-1)  # each N, C_out
        hidden = torch.einsum("nc,tkrc->tknr", flat, a.to(x.dtype))  # T, V, N, r: one matmul, C -> T*V*r
        count = a.shape[1]
        out = []
        for name, part in zip(QKV_ORDER, parts):
            if name in self.targets:
                t = self.targets.index(name)  # frozen + B_k A_k x for every variant k, add fused in the bmm
                varied = torch.baddbmm(part.unsqueeze(0), hidden[t], b[t].to(x.dtype).transpose(1, 2))
            else:
                varied = part.unsqueeze(0) if shared else part.unsqueeze(0).expand(count, -1, -1)
            out.append(varied.view(varied.shape[0], *lead, self.dim_out))
        return out[0], out[1], out[2]

    def merged(self, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One LoRA with A = Σ_k w_k A_k and B = Σ_k w_k B_k (LoRAHub), shaped T, 1, r, C_in / T, 1, C_out, r."""
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


def variants_attention(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       hw: tuple[int, int]) -> torch.Tensor:
    """SAM's Attention (decomposed relative positions) after the qkv projection, for V variants
    at once, written as SAM does it (explicit softmax; on CPU this beats SDPA with a float mask
    that needs a gradient). q: V, n, L, C; k, v: V or 1 (shared by every variant), n, L, C
    -> V, n, L, C after `attn.proj`. A shared k enters one bmm for all variants, never copied."""
    count = max(q.shape[0], k.shape[0], v.shape[0])
    q = q.expand(count, -1, -1, -1)  # q is shared only when no expert changes q
    _, n, length, dim = q.shape
    heads = attn.num_heads
    hd = dim // heads
    h, w = hw
    # The decomposed relative-position term rel_h[l, kh] + rel_w[l, kw] is linear in q, so it rides
    # in the same matmul: q' = [q * scale, rel_h, rel_w] (hd + h + w), k' = [k, onehot(kh), onehot(kw)].
    # No L x L bias tensor is built, added, or reduced in backward.
    if k.shape[0] == 1:  # all variants against the one k: n*heads, V*L, hd' @ n*heads, hd', L
        qh = q.view(count, n, length, heads, hd).permute(1, 3, 0, 2, 4)  # n, heads, V, L, hd
        kh = k[0].view(n, length, heads, hd).permute(0, 2, 3, 1)  # n, heads, hd, L
    else:
        qh = q.view(count, n, length, heads, hd).permute(0, 1, 3, 2, 4)  # V, n, heads, L, hd
        kh = k.expand(count, -1, -1, -1).reshape(count, n, length, heads, hd).permute(0, 1, 3, 4, 2)
    qs = qh * attn.scale
    if attn.use_rel_pos:
        # q . Rh[h_q - h_k + h - 1] for every relative offset from ONE matmul of the scaled q with both
        # tables (2h-1 + 2w-1 rows, pre-divided by scale), then gathered: q is never permuted again.
        rh = _resized_rel_pos(h, attn.rel_pos_h).to(q.dtype)
        rw = _resized_rel_pos(w, attn.rel_pos_w).to(q.dtype)
        per_offset = torch.matmul(qs, (torch.cat([rh, rw]) / attn.scale).t())  # ..., L, 2h-1 + 2w-1
        index = _rel_pos_index(h, w, q.device)  # L, h + w
        rel = per_offset.gather(-1, index.expand(*per_offset.shape[:-1], h + w))
        qs = torch.cat([qs, rel], dim=-1)
        eye_h = torch.eye(h, dtype=q.dtype, device=q.device)
        eye_w = torch.eye(w, dtype=q.dtype, device=q.device)
        onehot = torch.cat([eye_h.repeat_interleave(w, dim=0), eye_w.repeat(h, 1)], dim=1).t()  # h+w, L
        kh = torch.cat([kh, onehot.expand(*kh.shape[:-2], -1, -1)], dim=-2)
    if k.shape[0] == 1:
        logits = torch.matmul(qs.reshape(n, heads, count * length, -1), kh).view(n, heads, count, length, length)
    else:
        logits = torch.matmul(qs, kh)  # V, n, heads, L, L
    probs = logits.softmax(dim=-1)
    if k.shape[0] == 1:  # probs n, heads, V, L, L
        vh = v.expand(count, -1, -1, -1).view(count, n, length, heads, hd).permute(1, 3, 0, 2, 4)
        out = torch.matmul(probs, vh).permute(2, 0, 3, 1, 4)  # V, n, L, heads, hd
    else:  # probs V, n, heads, L, L
        vh = v.expand(count, -1, -1, -1).view(count, n, length, heads, hd).permute(0, 1, 3, 2, 4)
        out = torch.matmul(probs, vh).permute(0, 1, 3, 2, 4)
    return attn.proj(out.reshape(count, n, length, dim))


def _resized_rel_pos(size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """The 2*size-1 rows (offset q - k + size - 1) SAM's get_rel_pos picks from, interpolated as it does."""
    length = 2 * size - 1
    if rel_pos.shape[0] == length:
        return rel_pos
    resized = F.interpolate(rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=length, mode="linear")
    return resized.reshape(-1, length).permute(1, 0)


def _rel_pos_index(h: int, w: int, device: torch.device) -> torch.Tensor:
    """L, h + w: for token (i, j) the rows of [Rh; Rw] giving its terms for key rows 0..h-1, cols 0..w-1."""
    i = torch.arange(h, device=device).repeat_interleave(w)  # token row
    j = torch.arange(w, device=device).repeat(h)  # token column
    rows = i[:, None] - torch.arange(h, device=device) + h - 1
    cols = j[:, None] - torch.arange(w, device=device) + w - 1 + (2 * h - 1)
    return torch.cat([rows, cols], dim=1)


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
            q, k, v = qkv.variants(tokens, a, b, include_base=False, shared=True)
        else:
            q, k, v = qkv.variants(tokens, shared=True)  # K+1 (or 1 when shared), n, h, w, C
        out = variants_attention(self.attn, *(t.reshape(t.shape[0], n, h * w, dim) for t in (q, k, v)), (h, w))
        count = out.shape[0]

        if self.fuser.merges_lora:
            x = shortcut + self._unpartition(out.view(n, h, w, dim), pad_hw, (height, width))
            return x + self.mlp(self.norm2(x))

        if self.scope == "attention":
            frozen, experts = out.split([1, count - 1])  # split: no zero-filled select grads
            attn_out = frozen[0] + self._fuse(experts - frozen)  # n, L, C
            x = shortcut + self._unpartition(attn_out.view(n, h, w, dim), pad_hw, (height, width))
            return x + self.mlp(self.norm2(x))

        # scope "block": residual + MLP per variant, batched
        attn_out = self._unpartition(out.view(count * n, h, w, dim), pad_hw, (height, width))
        blocks = shortcut + attn_out.view(count, batch, height, width, dim)
        blocks = blocks + self.mlp(self.norm2(blocks))
        frozen, experts_out = blocks.split([1, count - 1])
        frozen, deltas = frozen[0], experts_out - frozen  # K, B, H, W, C
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
