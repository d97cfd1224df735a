"""TinyViT-SAM image encoder (LiteMedSAM, MobileSAM) built for any input size.

What differs from the shipped models: every block takes its resolution from its input (they fix it at
build time and reshape the output to 64 x 64), the blocks sit in one flat list `blocks` (the LoRA blocks
of samora_kit_plugins.lora.ExpertHost), and the attention's fused qkv is laid out [q | k | v] with heads
inside each part, as SAM's, so the kit's LoRA writes into q and v (the official per-head layout is
permuted at load, layout.py). Channels-last B,H,W,C between attention blocks.

Padding: a block pads its map to whole windows *before* the attention's LayerNorm and does not mask the
padded tokens, exactly as the official TinyViT does, so the frozen path equals the shipped model.

The parts are written here rather than taken from timm's tiny_vit (same layers, same parameter names):
importing timm imports every timm model and torchvision, 1.7 s that `samora-kit validate` of a LiteMedSAM
recipe would pay just to build three small modules (docs/decisions.md).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from .config import TinyViTPreset


class ConvNorm(nn.Sequential):
    """A bias-free convolution and its BatchNorm (`conv`, `bn`: timm's ConvNorm, TinyViT's Conv2d_BN)."""

    def __init__(self, in_chs: int, out_chs: int, ks: int = 1, stride: int = 1, pad: int = 0, groups: int = 1,
                 bn_weight_init: float = 1.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, ks, stride, pad, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project, GELUs, the shortcut before the last GELU."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvNorm(dim, hidden)
        self.conv2 = ConvNorm(hidden, hidden, ks=3, pad=1, groups=hidden)
        self.conv3 = ConvNorm(hidden, dim, bn_weight_init=0.0)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B, C, H, W
        return self.act(x + self.conv3(self.act(self.conv2(self.act(self.conv1(x))))))


class NormMlp(nn.Module):
    """LayerNorm, Linear, GELU, Linear (`norm`, `fc1`, `fc2`)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class WindowAttention(nn.Module):
    """TinyViT's attention over the tokens of one window: LayerNorm, fused qkv ([q | k | v], heads inside
    each), softmax(q k^T / sqrt(d) + bias[offset]) v, output projection. The learned bias per head and per
    window offset (|dy|, |dx|) is what replaces position embeddings."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.window = num_heads, window
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        offsets, index = window_offsets(window)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, offsets))
        self.register_buffer("attention_bias_idxs", index, persistent=False)

    def bias(self) -> torch.Tensor:
        """heads, L, L: the learned bias of every query/key pair of a window."""
        return self.attention_biases[:, self.attention_bias_idxs]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v: V or 1 (shared by every variant), n, L, C -> V, n, L, C before `proj`: all variants in one call."""
        count = max(q.shape[0], k.shape[0], v.shape[0])
        _, n, length, dim = v.shape
        heads = self.num_heads

        def heads_first(t: torch.Tensor) -> torch.Tensor:  # V', n, L, C -> count * n, heads, L, C / heads
            return t.expand(count, -1, -1, -1).reshape(count * n, length, heads, dim // heads).transpose(1, 2)

        # a 4-D mask: with the 3-D heads, L, L one, CPU SDPA falls back to its math kernel (2-2.5x slower)
        bias = self.bias().to(q.dtype).expand(count * n, -1, -1, -1)
        out = F.scaled_dot_product_attention(heads_first(q), heads_first(k), heads_first(v), attn_mask=bias)
        return out.transpose(1, 2).reshape(count, n, length, dim)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:  # n, L, C -> n, L, C
        q, k, v = self.qkv(self.norm(windows)).chunk(3, dim=-1)
        return self.proj(self.attend(q[None], k[None], v[None])[0])


def window_offsets(window: int) -> tuple[int, torch.Tensor]:
    """(number of distinct offsets, L x L index of each pair's offset), in TinyViT's order of first appearance."""
    points = list(itertools.product(range(window), range(window)))
    seen: dict[tuple[int, int], int] = {}
    index = []
    for p1 in points:
        for p2 in points:
            offset = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            index.append(seen.setdefault(offset, len(seen)))
    return len(seen), torch.tensor(index, dtype=torch.long).view(len(points), len(points))


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """B,H,W,C -> (n = B*windows, window*window, C, zero-padded at the bottom and right; the padded H, W)."""
    b, h, w, c = x.shape
    pad_b, pad_r = (window - h % window) % window, (window - w % window) % window
    if pad_b or pad_r:
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    hp, wp = h + pad_b, w + pad_r
    x = x.view(b, hp // window, window, wp // window, window, c).transpose(2, 3)
    return x.reshape(-1, window * window, c), (hp, wp)


def window_unpartition(windows: torch.Tensor, window: int, padded: tuple[int, int], hw: tuple[int, int]
                       ) -> torch.Tensor:
    """n, window*window, C -> B,H,W,C (the padding cut off)."""
    (hp, wp), (h, w) = padded, hw
    c = windows.shape[-1]
    x = windows.view(-1, hp // window, wp // window, window, window, c).transpose(2, 3).reshape(-1, hp, wp, c)
    return x[:, :h, :w].contiguous() if (hp, wp) != (h, w) else x


class TinyViTBlock(nn.Module):
    """x + attention (in windows), then a depthwise 3x3 convolution, then x + MLP. B,H,W,C -> B,H,W,C."""

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float) -> None:
        super().__init__()
        self.dim = self.dim_out = dim
        self.window_size = window
        self.attn = WindowAttention(dim, num_heads, window)
        self.mlp = NormMlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvNorm(dim, dim, ks=3, pad=1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        windows, padded = window_partition(x, self.window_size)
        x = shortcut + window_unpartition(self.attn(windows), self.window_size, padded, x.shape[1:3])
        return self.convolve_and_mlp(x)

    def convolve_and_mlp(self, x: torch.Tensor) -> torch.Tensor:
        """What follows the attention's residual: the depthwise convolution, then the MLP's residual."""
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)


class PatchMerging(nn.Module):
    """1x1 convolution to the next width, depthwise 3x3 (stride 2, or 1 before TinyViT-SAM's last stage), 1x1."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvNorm(dim, out_dim, 1, 1, 0)
        self.act = nn.GELU()
        self.conv2 = ConvNorm(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = ConvNorm(out_dim, out_dim, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B,C,H,W -> B,C',H/s,W/s
        return self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))


class PatchEmbed(nn.Module):
    """Two convolutions with a GELU between: 1x1 (LiteMedSAM, stride 1) or 3x3 stride 2 twice (MobileSAM)."""

    def __init__(self, dim: int, stride: int) -> None:
        super().__init__()
        if stride not in (1, 4):
            raise ValueError(f"stem stride {stride}: TinyViT-SAM stems have stride 1 (LiteMedSAM) or 4 (MobileSAM)")
        ks, step, pad = (1, 1, 0) if stride == 1 else (3, 2, 1)
        self.seq = nn.Sequential(ConvNorm(3, dim // 2, ks, step, pad), nn.GELU(), ConvNorm(dim // 2, dim, ks, step, pad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of B,C,H,W (SAM's neck)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * ((x - u) / torch.sqrt(s + self.eps)) + self.bias[:, None, None]


class TinyViTEncoder(nn.Module):
    """B,3,S,S -> B,out_chans,S/stride,S/stride. `blocks` are the attention blocks of stages 1-3, in order."""

    def __init__(self, preset: TinyViTPreset) -> None:
        super().__init__()
        dims = preset.embed_dims
        self.preset = preset
        self.patch_embed = PatchEmbed(dims[0], preset.stem_stride)
        self.conv_blocks = nn.Sequential(*(MBConv(dims[0], preset.mbconv_expand_ratio) for _ in range(preset.depths[0])))
        self.merges = nn.ModuleList(PatchMerging(dims[i], dims[i + 1], preset.merge_strides[i]) for i in range(3))
        self.blocks = nn.ModuleList(TinyViTBlock(dims[stage], preset.num_heads[stage], preset.window_sizes[stage],
                                                 preset.mlp_ratio)
                                    for stage in (1, 2, 3) for _ in range(preset.depths[stage]))
        self.stage_of_block = [stage for stage in (1, 2, 3) for _ in range(preset.depths[stage])]
        self.neck = nn.Sequential(nn.Conv2d(dims[3], preset.out_chans, 1, bias=False), LayerNorm2d(preset.out_chans),
                                  nn.Conv2d(preset.out_chans, preset.out_chans, 3, padding=1, bias=False),
                                  LayerNorm2d(preset.out_chans))

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """B,3,S,S -> the last block's output B,g,g,C (before the neck)."""
        x = self.conv_blocks(self.patch_embed(images))  # B, C, H, W
        stage = 0
        for block, block_stage in zip(self.blocks, self.stage_of_block):
            if block_stage != stage:  # the patch merging between two stages
                x = self.merges[stage](x if stage == 0 else x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
                stage = block_stage
            x = block(x)
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.neck(self.tokens(images).permute(0, 3, 1, 2))
