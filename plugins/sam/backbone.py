"""Frozen SAM ViT image encoder with LoRA on the fused qkv of chosen blocks."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling import ImageEncoderViT
from torch import nn

from samora_kit.errors import CheckpointError
from samora_kit.weights.import_sam import read_sam_weights

from .config import SAM_PRESETS, SamBackboneConfig
from .lora import LoRAQKV
from .pretrained import fit_encoder_state

PATCH_SIZE = 16
ENCODER_PREFIX = "image_encoder."


def build_image_encoder(variant: str, image_size: int) -> ImageEncoderViT:
    """The official SAM encoder architecture at `image_size` (random weights)."""
    p = SAM_PRESETS[variant]
    return ImageEncoderViT(
        img_size=image_size, patch_size=PATCH_SIZE, embed_dim=p.embed_dim, depth=p.depth,
        num_heads=p.num_heads, mlp_ratio=4, out_chans=p.out_chans, qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), act_layer=nn.GELU, use_abs_pos=True,
        use_rel_pos=True, rel_pos_zero_init=True, window_size=p.window_size,
        global_attn_indexes=p.global_attn_indexes,
    )


class SamBackbone(nn.Module):
    """Input B,3,S,S in [0, 1] (pixel mean 0 / std 1, as SAMed); output B,C,g,g."""

    def __init__(self, config: SamBackboneConfig) -> None:
        super().__init__()
        self.variant = config.variant
        self.image_size = config.image_size
        self.embed_channels = config.preset.out_chans
        self.embed_grid = config.image_size // PATCH_SIZE
        self.checkpoint_path: Path | None = config.checkpoint
        self.encoder = build_image_encoder(config.variant, config.image_size)
        if config.checkpoint is not None:
            self._load_pretrained(config.checkpoint, config.checkpoint_sha256)
        self.encoder.requires_grad_(False)
        for i in config.lora_block_indexes():
            attn = self.encoder.blocks[i].attn
            attn.qkv = LoRAQKV(attn.qkv, config.lora.rank, config.lora.targets)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        expected = (3, self.image_size, self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"SAM backbone expects images B,{','.join(map(str, expected))}; "
                             f"got {tuple(images.shape)}")
        return self.encoder(images)  # B, C, g, g

    def lora_layers(self) -> dict[int, LoRAQKV]:
        """Block index -> its LoRA-wrapped qkv."""
        return {i: b.attn.qkv for i, b in enumerate(self.encoder.blocks) if isinstance(b.attn.qkv, LoRAQKV)}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the LoRA A/B tensors, keyed like `encoder.blocks.0.attn.qkv.lora_a.q.weight`."""
        return {k: v for k, v in self.state_dict().items() if ".lora_a." in k or ".lora_b." in k}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        own = self.trainable_state_dict()
        if set(state) != set(own):
            missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
            raise CheckpointError(f"LoRA tensors do not match this backbone: missing {missing[:3]}, "
                                  f"unexpected {extra[:3]}")
        bad = [k for k in own if own[k].shape != state[k].shape]
        if bad:
            raise CheckpointError(f"LoRA tensor {bad[0]} has shape {tuple(state[bad[0]].shape)}, "
                                  f"expected {tuple(own[bad[0]].shape)}")
        self.load_state_dict(state, strict=False)

    def _load_pretrained(self, path: Path, sha256: str | None) -> None:
        tensors, header = read_sam_weights(path, sha256)
        if header.get("variant", self.variant) != self.variant:
            raise CheckpointError(f"{path}: header variant is {header['variant']!r}, "
                                  f"but the backbone is configured as {self.variant!r}")
        found = {k[len(ENCODER_PREFIX):]: v for k, v in tensors.items() if k.startswith(ENCODER_PREFIX)}
        if not found:
            raise CheckpointError(f"{path}: holds no image_encoder.* tensors; expected an imported SAM checkpoint")
        fitted = fit_encoder_state(found, self.encoder.state_dict(),
                                   SAM_PRESETS[self.variant].global_attn_indexes, Path(path))
        self.encoder.load_state_dict(fitted)


def build_sam_backbone(config: SamBackboneConfig) -> SamBackbone:
    """SAM ViT image encoder, frozen, with SAMed-style LoRA on q/v."""
    return SamBackbone(config)
