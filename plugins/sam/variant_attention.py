"""SAM's attention after its qkv projection, for the K+1 variants of a fused block at once.

The variants [frozen, frozen + expert 1, ..., frozen + expert K] share the frozen k (only q and v
carry LoRA by default). Two forms, chosen by `rel_pos_attention.fused_kernel_pays` (measured,
docs/decisions.md "Attention kernel"): every variant through one fused SDPA call with the relative
positions folded into q and k (`variants_attention`), or explicit logits where each expert's are the
frozen ones plus a rank-r correction (`low_rank_variants_attention`; in inference a cache-sized chunk
of (image, head) pairs at a time). Results are *before* the block's output projection.
"""

from __future__ import annotations

import torch
from segment_anything.modeling.image_encoder import Attention

from .rel_pos_attention import fold_rel_pos, fused_attention, rel_pos_index, rel_pos_onehot, rel_pos_tables, rel_terms

# Without a gradient, the explicit variants run a chunk of (image, head) pairs at a time, the chunk's
# L x L logits about this many bytes, so that each variant's logits, softmax and product with the values stay
# in cache (`python -m samora_benchmarks.attention --inference-chunks`, docs/benchmarks.md, issue 9). Training keeps one
# call: the tensors it saves for the backward go to memory anyway.
INFERENCE_CHUNK_BYTES = 1 << 20


def variants_attention(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       hw: tuple[int, int]) -> torch.Tensor:
    """SAM's Attention after the qkv projection for V variants in one fused SDPA call.
    q, k, v: V or 1 (shared by every variant), n, L, C -> V, n, L, C before `attn.proj`."""
    count = max(q.shape[0], k.shape[0], v.shape[0])
    _, n, length, dim = k.shape
    heads = attn.num_heads
    hd = dim // heads

    def heads_first(t: torch.Tensor) -> torch.Tensor:  # V', n, L, C -> V', n, heads, L, hd
        return t.reshape(t.shape[0], n, length, heads, hd).transpose(2, 3)

    qf, kf = fold_rel_pos(attn, heads_first(q), heads_first(k), hw)  # k' folded once when shared
    vh = heads_first(v)
    if k.shape[0] == 1 and v.shape[0] == 1:  # all variants against one k, v: they ride in the query length
        qf = qf.expand(count, -1, -1, -1, -1).permute(1, 2, 0, 3, 4).reshape(n, heads, count * length, -1)
        out = fused_attention(qf, kf[0], vh[0]).view(n, heads, count, length, hd).permute(2, 0, 3, 1, 4)
    else:
        qf, kf, vh = (t.expand(count, -1, -1, -1, -1).flatten(0, 1) for t in (qf, kf, vh))
        out = fused_attention(qf, kf, vh).view(count, n, heads, length, hd).transpose(2, 3)
    return out.reshape(count, n, length, dim)  # V, n, L, heads, hd -> V, n, L, C


def low_rank_variants_attention(attn: Attention, q0: torch.Tensor, u: torch.Tensor, b: torch.Tensor,
                                k: torch.Tensor, v: torch.Tensor, hw: tuple[int, int],
                                chunk_bytes: int = INFERENCE_CHUNK_BYTES) -> torch.Tensor:
    """`variants_attention` with explicit logits, for experts that change q by a rank-r term and leave k
    frozen: expert e's q is q0 + u_e b_e^T, so its logits are the frozen logits S_0 plus u_e (b_e^T k^T) per
    head (and the relative-position term of u_e b_e^T). S_0 is computed once; each expert adds an L x r x L
    product instead of an L x head_dim x L one, and is taken through softmax and the values on its own, so no
    K x L x L tensor is ever built. The relative-position terms ride in the matmuls as extra columns
    (rel_pos_attention.py). q0: n, L, C; u: E, n, L, r; b: E, C, r; k: 1, n, L, C; v: V or 1, n, L, C
    -> V = E + 1, n, L, C before `attn.proj` (variant 0 the frozen path). Without a gradient, (image, head)
    pairs run in chunks whose logits take about `chunk_bytes`."""
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
    if attn.use_rel_pos:
        tables = rel_pos_tables(attn, h, w, q0.dtype)
        index = rel_pos_index(h, w, q0.device)  # L, h + w
        rel0 = rel_terms(torch.matmul(qh, tables.t()), index)  # n, heads, L, h + w
        rel = rel_terms(torch.einsum("enlr,ehrp->enhlp", u, torch.einsum("ehdr,pd->ehrp", bh, tables)),
                        index)  # E, n, heads, L, h + w
        onehot = rel_pos_onehot(h, w, q0).t()  # h + w, L
        lhs0, rhs0 = torch.cat([lhs0, rel0], dim=-1), torch.cat([rhs0, onehot.expand(n, heads, -1, -1)], dim=-2)
        lhs = torch.cat([lhs, rel], dim=-1)
        rhs = torch.cat([rhs, onehot.expand(experts, n, heads, -1, -1)], dim=-2)
    # unbind, not indexing: an indexed slice's gradient is a zero-filled tensor of the whole, per expert
    values = v.view(v.shape[0], n, length, heads, hd).transpose(2, 3).flatten(1, 2).unbind(0)  # n*heads, L, hd
    lhs0, rhs0, lhs, rhs = lhs0.flatten(0, 1), rhs0.flatten(0, 1), lhs.flatten(1, 2).unbind(0), rhs.flatten(1, 2).unbind(0)
    if torch.is_grad_enabled() and q0.requires_grad:
        out = torch.stack([torch.bmm(probs, value) for probs, value in _probabilities(lhs0, rhs0, lhs, rhs, values)])
    else:  # inference: a cache-sized chunk of (image, head) pairs at a time (docs/benchmarks.md, issue 9)
        out = q0.new_empty(experts + 1, n * heads, length, hd)
        step = max(1, chunk_bytes // (length * length * q0.element_size()))
        for s in range(0, n * heads, step):
            part = slice(s, s + step)
            chunk = _probabilities(lhs0[part], rhs0[part], [t[part] for t in lhs], [t[part] for t in rhs],
                                   [t[part] for t in values])
            for e, (probs, value) in enumerate(chunk):
                torch.bmm(probs, value, out=out[e, part])
    out = out.view(experts + 1, n, heads, length, hd)
    return out.transpose(2, 3).reshape(experts + 1, n, length, dim)


def _probabilities(lhs0, rhs0, lhs, rhs, values):
    """(softmax of variant i's logits, variant i's values) for i = 0 (frozen) .. E, one variant at a time."""
    frozen = torch.bmm(lhs0, rhs0)  # g, L, L: S_0
    yield frozen.softmax(dim=-1), values[0]
    for e, (lhs_e, rhs_e) in enumerate(zip(lhs, rhs)):  # S_0 + correction, one baddbmm each
        yield torch.baddbmm(frozen, lhs_e, rhs_e).softmax(dim=-1), values[e + 1 if len(values) > 1 else 0]
