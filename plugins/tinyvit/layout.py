"""The official TinyViT-SAM key layout (LiteMedSAM's lite_medsam.pth, MobileSAM's mobile_sam.pt) and the
kit's TinyViTEncoder layout, both ways.

Official `image_encoder.*`             kit's encoder
  patch_embed.seq.N.c.*                  patch_embed.seq.N.conv.*      (timm's ConvNorm names its conv `conv`)
  layers.0.blocks.J.*                    conv_blocks.J.*               (MBConv)
  layers.I.downsample.*                  merges.I.*
  layers.I.blocks.J.* (I >= 1)           blocks.K.*                    (K counts the attention blocks in order)
  neck.*                                 neck.*
and every attention qkv (weight rows, bias) is permuted from the official per-head layout
[h0: q k v | h1: q k v | ...] to SAM's [q (all heads) | k | v], where the kit's LoRA targets q and v.
"""

from __future__ import annotations

import re

import torch

from .config import TinyViTPreset

OFFICIAL_PREFIX = "image_encoder."
_LAYER_BLOCK = re.compile(r"layers\.(\d+)\.blocks\.(\d+)\.(.*)")
_LAYER_MERGE = re.compile(r"layers\.(\d+)\.downsample\.(.*)")
_BLOCK = re.compile(r"blocks\.(\d+)\.(.*)")
_CONV_BLOCK = re.compile(r"conv_blocks\.(\d+)\.(.*)")
_MERGE = re.compile(r"merges\.(\d+)\.(.*)")


def qkv_rows(dim: int, heads: int) -> torch.Tensor:
    """Index of the official row behind each kit row: kit row p*C + h*d + i <- official row h*3d + p*d + i."""
    d = dim // heads
    return torch.tensor([h * 3 * d + p * d + i for p in range(3) for h in range(heads) for i in range(d)])


def _block_offsets(preset: TinyViTPreset) -> list[int]:
    """The kit index of the first attention block of stages 1, 2, 3."""
    return [sum(preset.depths[1:stage]) for stage in (1, 2, 3)]


def official_to_kit(state: dict[str, torch.Tensor], preset: TinyViTPreset) -> dict[str, torch.Tensor]:
    """`image_encoder.*` tensors of an official checkpoint -> the kit's TinyViTEncoder state dict."""
    offsets, out = _block_offsets(preset), {}
    for key, tensor in state.items():
        if not key.startswith(OFFICIAL_PREFIX):
            continue
        name = key[len(OFFICIAL_PREFIX):].replace(".c.", ".conv.")
        block, merge = _LAYER_BLOCK.fullmatch(name), _LAYER_MERGE.fullmatch(name)
        if block and int(block.group(1)) == 0:
            name = f"conv_blocks.{block.group(2)}.{block.group(3)}"
        elif block:
            stage, rest = int(block.group(1)), block.group(3)
            name = f"blocks.{offsets[stage - 1] + int(block.group(2))}.{rest}"
            if rest in ("attn.qkv.weight", "attn.qkv.bias"):
                tensor = tensor[qkv_rows(tensor.shape[0] // 3, preset.num_heads[stage])]
        elif merge:
            name = f"merges.{merge.group(1)}.{merge.group(2)}"
        out[name] = tensor
    return out


def kit_to_official(state: dict[str, torch.Tensor], preset: TinyViTPreset) -> dict[str, torch.Tensor]:
    """The kit's TinyViTEncoder state dict -> official `image_encoder.*` names and qkv layout."""
    starts = _block_offsets(preset)
    out = {}
    for name, tensor in state.items():
        block, conv, merge = _BLOCK.fullmatch(name), _CONV_BLOCK.fullmatch(name), _MERGE.fullmatch(name)
        if block:
            index, rest = int(block.group(1)), block.group(2)
            stage = max(s for s, first in zip((1, 2, 3), starts) if index >= first)
            if rest in ("attn.qkv.weight", "attn.qkv.bias"):
                inverse = torch.empty_like(rows := qkv_rows(tensor.shape[0] // 3, preset.num_heads[stage]))
                inverse[rows] = torch.arange(len(rows))
                tensor = tensor[inverse]
            name = f"layers.{stage}.blocks.{index - starts[stage - 1]}.{rest}"
        elif conv:
            name = f"layers.0.blocks.{conv.group(1)}.{conv.group(2)}"
        elif merge:
            name = f"layers.{merge.group(1)}.downsample.{merge.group(2)}"
        out[OFFICIAL_PREFIX + name.replace(".conv.", ".c.")] = tensor
    return out
