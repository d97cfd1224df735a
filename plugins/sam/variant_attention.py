"""SAM's attention after its qkv projection, for the K+1 variants of a fused block at once.

The variants [frozen, frozen + expert 1, ..., frozen + expert K] share the frozen k (only q and v
carry LoRA by default), so one bmm serves them all, and SAM's decomposed relative positions ride
in the q.k matmul instead of an L x L bias. The result is *before* the block's output projection.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos


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
    -> V, n, L, C before `attn.proj`. A shared k enters one bmm for all variants, never copied."""
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
        # tables (pre-divided by scale), then gathered: q is never permuted again.
        tables = _rel_pos_tables(attn, h, w, q.dtype)
        index = _rel_pos_index(h, w, q.device)  # L, h + w
        qs = torch.cat([qs, _rel_terms(torch.matmul(qs, (tables / attn.scale).t()), index)], dim=-1)
        onehot = _rel_pos_onehot(h, w, q)  # h + w, L
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
    return out.reshape(count, n, length, dim)


def low_rank_variants_attention(attn: Attention, q0: torch.Tensor, u: torch.Tensor, b: torch.Tensor,
                                k: torch.Tensor, v: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """`variants_attention` for experts that change q by a rank-r term and leave k frozen: expert e's
    q is q0 + u_e b_e^T, so its logits are the frozen logits S_0 plus u_e (b_e^T k^T) per head (and the
    relative-position term of u_e b_e^T). S_0 is computed once; each expert adds an L x r x L product
    instead of an L x head_dim x L one, and is taken through softmax and the values on its own, so no
    K x L x L tensor is ever built (on a CPU those passes are bound by memory, not arithmetic).
    q0: n, L, C; u: E, n, L, r; b: E, C, r; k: 1, n, L, C; v: V or 1, n, L, C
    -> V = E + 1, n, L, C before `attn.proj` (variant 0 the frozen path)."""
    experts, n, length, rank = u.shape
    dim = q0.shape[-1]
    heads = attn.num_heads
    hd = dim // heads
    h, w = hw
    qh = q0.view(n, length, heads, hd).transpose(1, 2)  # n, heads, L, hd
    kh = k.squeeze(0).view(n, length, heads, hd).permute(0, 2, 3, 1)  # n, heads, hd, L
    bh = b.view(experts, heads, hd, rank)  # rows of b that make each head's q
    lhs0, rhs0 = qh * attn.scale, kh
    lhs = u.unsqueeze(2).expand(-1, -1, heads, -1, -1)  # E, n, heads, L, r
    rhs = torch.einsum("ehdr,nhdl->enhrl", bh * attn.scale, kh)  # E, n, heads, r, L: b_e^T k^T per head
    if attn.use_rel_pos:  # as in variants_attention: the rel-pos terms ride in the matmuls as extra columns
        tables = _rel_pos_tables(attn, h, w, q0.dtype)
        index = _rel_pos_index(h, w, q0.device)  # L, h + w
        rel0 = _rel_terms(torch.matmul(qh, tables.t()), index)  # n, heads, L, h + w
        rel = _rel_terms(torch.einsum("enlr,ehrp->enhlp", u, torch.einsum("ehdr,pd->ehrp", bh, tables)),
                         index)  # E, n, heads, L, h + w
        onehot = _rel_pos_onehot(h, w, q0)  # h + w, L
        lhs0, rhs0 = torch.cat([lhs0, rel0], dim=-1), torch.cat([rhs0, onehot.expand(n, heads, -1, -1)], dim=-2)
        lhs = torch.cat([lhs, rel], dim=-1)
        rhs = torch.cat([rhs, onehot.expand(experts, n, heads, -1, -1)], dim=-2)
    frozen = torch.matmul(lhs0, rhs0).flatten(0, 1)  # n*heads, L, L
    # unbind, not indexing: an indexed slice's gradient is a zero-filled tensor of the whole, per expert
    values = v.view(v.shape[0], n, length, heads, hd).transpose(2, 3).flatten(1, 2).unbind(0)  # n*heads, L, hd
    outs = [torch.bmm(frozen.softmax(dim=-1), values[0])]
    for e, (lhs_e, rhs_e) in enumerate(zip(lhs.unbind(0), rhs.unbind(0))):  # S_0 + correction, one baddbmm each
        logits = torch.baddbmm(frozen, lhs_e.flatten(0, 1), rhs_e.flatten(0, 1))
        outs.append(torch.bmm(logits.softmax(dim=-1), values[e + 1 if len(values) > 1 else 0]))
    out = torch.stack(outs).view(experts + 1, n, heads, length, hd)
    return out.transpose(2, 3).reshape(experts + 1, n, length, dim)


def _rel_pos_tables(attn: Attention, h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
    """[Rh; Rw]: the 2h-1 + 2w-1 relative-position rows of a window of h x w tokens, head_dim wide."""
    return torch.cat([_resized_rel_pos(h, attn.rel_pos_h), _resized_rel_pos(w, attn.rel_pos_w)]).to(dtype)


def _rel_terms(per_offset: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """..., L, 2h-1 + 2w-1 (q . every relative offset) -> ..., L, h + w (q . the offsets to each key row, column)."""
    return per_offset.gather(-1, index.expand(*per_offset.shape[:-1], index.shape[-1]))


def _rel_pos_onehot(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """h + w, L: row kh (then h + kw) is 1 at the tokens of key row kh (key column kw)."""
    eye_h = torch.eye(h, dtype=like.dtype, device=like.device)
    eye_w = torch.eye(w, dtype=like.dtype, device=like.device)
    return torch.cat([eye_h.repeat_interleave(w, dim=0), eye_w.repeat(h, 1)], dim=1).t()


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
