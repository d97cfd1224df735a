"""SAM's attention with decomposed relative positions on a fused SDPA kernel, no L x L bias.

SAM adds q . Rh[i - i'] + q . Rw[j - j'] to the logit of query token (i, j) and key token (i', j').
The term is linear in q, so it rides in the q.k product as extra columns, exactly:

    q' = [q * scale, q . Rh[i - 0..h-1], q . Rw[j - 0..w-1]]      (head_dim + h + w wide)
    k' = [k,         onehot(i'),         onehot(j')]

and scaled_dot_product_attention(q', k', v, scale=1) runs with no mask. A float mask that needs a
gradient (LoRA on q) sends the CPU's SDPA to its unfused math path, and CUDA's flash kernel takes no
mask at all; FlexAttention has no backward on the CPU. v is zero-padded to q''s width because the
flash kernels need one width for q, k and v. docs/decisions.md ("Attention kernel") has the figures.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention

# Up to how many tokens the CPU keeps the explicit softmax, by (expert variants with rank-r logits,
# gradient through attention): measured, docs/decisions.md "Attention kernel". The CPU's flash kernel
# loses in backward on short windows, and the rank-r logits save more than fusing does.
CPU_EXPLICIT_MAX_TOKENS = {(False, False): 0, (False, True): 400, (True, False): 1024, (True, True): 1024}


def fused_kernel_pays(like: torch.Tensor, length: int, needs_grad: bool, low_rank: bool = False) -> bool:
    """Whether the fused kernel beats the explicit softmax for attention over `length` tokens on
    `like`'s device: always on an accelerator, above CPU_EXPLICIT_MAX_TOKENS on the CPU."""
    return like.device.type != "cpu" or length > CPU_EXPLICIT_MAX_TOKENS[low_rank, needs_grad]


def fold_rel_pos(attn: Attention, q: torch.Tensor, k: torch.Tensor,
                 hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k: ..., L, head_dim (heads first, L = h*w; leading dims broadcast, e.g. one k for all
    variants) -> q' (scaled, plus the rel-pos columns), k' (plus the one-hot columns), for scale 1."""
    qs = q * attn.scale
    if not attn.use_rel_pos:
        return qs, k
    h, w = hw
    per_offset = torch.matmul(q, rel_pos_tables(attn, h, w, q.dtype).t())  # ..., L, 2h-1 + 2w-1
    onehot = rel_pos_onehot(h, w, k)  # L, h + w
    return (torch.cat([qs, rel_terms(per_offset, rel_pos_index(h, w, q.device))], dim=-1),
            torch.cat([k, onehot.expand(*k.shape[:-1], -1)], dim=-1))


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SDPA at scale 1 of folded q', k' (..., L, E') and v (..., L, E) -> ..., Lq, E."""
    width = v.shape[-1]
    if q.shape[-1] != width:  # the flash kernels need one width; the zero columns are cut off after
        v = F.pad(v, (0, q.shape[-1] - width))
    return F.scaled_dot_product_attention(q, k, v, scale=1.0)[..., :width]


def sam_attention_sdpa(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """`Attention.forward` (x: B, H, W, C -> B, H, W, C) on the fused kernel."""
    b, h, w, c = x.shape
    q, k, v = attn.qkv(x).reshape(b, h * w, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # B, heads, L, hd
    out = fused_attention(*fold_rel_pos(attn, q, k, (h, w)), v)
    return attn.proj(out.transpose(1, 2).reshape(b, h, w, c))


class RelPosSdpaAttention(Attention):
    """segment-anything's Attention (same parameters and names) that runs `sam_attention_sdpa` where
    the fused kernel pays and segment-anything's own explicit softmax elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B, H, W, C
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))
        if fused_kernel_pays(x, x.shape[1] * x.shape[2], needs_grad):
            return sam_attention_sdpa(self, x)
        return super().forward(x)


def use_fused_attention(encoder: torch.nn.Module) -> None:
    """Swap every segment-anything Attention in `encoder` for RelPosSdpaAttention, in place."""
    for module in encoder.modules():
        if type(module) is Attention:
            module.__class__ = RelPosSdpaAttention


def rel_pos_tables(attn: Attention, h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
    """[Rh; Rw]: the 2h-1 + 2w-1 relative-position rows of a window of h x w tokens, head_dim wide."""
    return torch.cat([_resized_rel_pos(h, attn.rel_pos_h), _resized_rel_pos(w, attn.rel_pos_w)]).to(dtype)


def rel_terms(per_offset: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """..., L, 2h-1 + 2w-1 (q . every relative offset) -> ..., L, h + w (q . the offsets to each key row, column)."""
    return per_offset.gather(-1, index.expand(*per_offset.shape[:-1], index.shape[-1]))


def rel_pos_onehot(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """L, h + w: token (i, j) is 1 in column i (its row) and column h + j (its column)."""
    eye_h = torch.eye(h, dtype=like.dtype, device=like.device)
    eye_w = torch.eye(w, dtype=like.dtype, device=like.device)
    return torch.cat([eye_h.repeat_interleave(w, dim=0), eye_w.repeat(h, 1)], dim=1)


def rel_pos_index(h: int, w: int, device: torch.device) -> torch.Tensor:
    """L, h + w: for token (i, j) the rows of [Rh; Rw] giving its terms for key rows 0..h-1, cols 0..w-1."""
    i = torch.arange(h, device=device).repeat_interleave(w)  # token row
    j = torch.arange(w, device=device).repeat(h)  # token column
    rows = i[:, None] - torch.arange(h, device=device) + h - 1
    cols = j[:, None] - torch.arange(w, device=device) + w - 1 + (2 * h - 1)
    return torch.cat([rows, cols], dim=1)


def _resized_rel_pos(size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """The 2*size-1 rows (offset q - k + size - 1) SAM's get_rel_pos picks from, interpolated as it does."""
    length = 2 * size - 1
    if rel_pos.shape[0] == length:
        return rel_pos
    resized = F.interpolate(rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=length, mode="linear")
    return resized.reshape(-1, length).permute(1, 0)
