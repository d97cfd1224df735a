"""Frozen SAM ViT image encoder with LoRA on the fused qkv of chosen blocks."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling import ImageEncoderViT
from torch import nn

from samora_kit.api import CheckpointError
from samora_kit_plugins.lora import ExpertHost, FuserFactory
from samora_kit_plugins.sam_weights import read_sam_weights

from .config import SAM_PRESETS, SamBackboneConfig
from .experts import install_experts
from .pretrained import fit_encoder_state
from .rel_pos_attention import use_fused_attention

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


class SamBackbone(ExpertHost, nn.Module):
    """Input B,3,S,S in [0, 1] (pixel mean 0 / std 1, as SAMed); output B,C,g,g.
    Also a PretrainableBackbone: `tokens`, `block_outputs`, `default_skip_blocks`.

    Without `config.experts`: one trainable LoRA (SAMed, stage 1). With it: K frozen LoRA
    experts per LoRA block and one fuser per block (from `fuser`), the only trainable part."""

    def __init__(self, config: SamBackboneConfig, fuser: FuserFactory | None = None) -> None:
        super().__init__()
        self.variant = config.variant
        self.image_size = config.image_size
        self.embed_channels = config.preset.out_chans
        self.embed_grid = config.image_size // PATCH_SIZE
        self.embed_stride = PATCH_SIZE
        self.checkpoint_path: Path | None = config.checkpoint
        self.lora_rank = config.lora.rank
        self.lora_targets = tuple(t for t in ("q", "k", "v") if t in config.lora.targets)
        self.lora_blocks = config.lora_block_indexes()
        self.experts_config = config.experts
        self.encoder = build_image_encoder(config.variant, config.image_size)
        use_fused_attention(self.encoder)  # same parameters; relative positions on a fused kernel
        if config.checkpoint is not None:
            self._load_pretrained(config.checkpoint, config.checkpoint_sha256)
        self.encoder.requires_grad_(False)
        scope = config.experts.scope if config.experts is not None else None
        self.adapt_blocks(config, fuser, lambda *block_and_experts: install_experts(*block_and_experts, scope),
                          "build_sam_backbone")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self._check_images(images)
        return self.encoder(images)  # B, C, g, g

    def _check_images(self, images: torch.Tensor) -> None:
        expected = (3, self.image_size, self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"SAM backbone expects images B,{','.join(map(str, expected))}; "
                             f"got {tuple(images.shape)}")

    def shape_description(self) -> dict:
        """What an expert pack must match: backbone name, variant, image size, width, depth."""
        preset = SAM_PRESETS[self.variant]
        return {"name": "sam", "variant": self.variant, "image_size": self.image_size,
                "embed_dim": preset.embed_dim, "depth": preset.depth}

    # --- PretrainableBackbone (block_channels and block_outputs come from ExpertHost) ---------------

    @property
    def token_channels(self) -> int:
        return SAM_PRESETS[self.variant].embed_dim

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Encoder tokens before the neck: patch_embed, + pos_embed, the blocks (with their LoRA).
        Images B,3,S,S in [0, 1] -> B, S/16, S/16, W (W = the ViT width, e.g. 768 for ViT-B)."""
        self._check_images(images)
        x = self.encoder.patch_embed(images)  # B, g, g, W
        if self.encoder.pos_embed is not None:
            x = x + self.encoder.pos_embed
        for block in self.encoder.blocks:
            x = block(x)
        return x

    def default_skip_blocks(self) -> list[int]:
        """The blocks ending each quarter of the depth but the last (2, 5, 8 for ViT-B)."""
        depth = SAM_PRESETS[self.variant].depth
        return sorted({depth * k // 4 - 1 for k in (1, 2, 3)} - {-1})

    ENCODER_ONLY_FORMAT = "sam-encoder"  # what a self-pre-trained base of this backbone is saved as
    BACKBONE_PACKAGE = "segment-anything"  # where the architecture comes from: expert packs record its version

    def encoder_state_in_official_layout(self) -> dict[str, torch.Tensor]:
        """The encoder's own weights (no LoRA) under SAM's official `image_encoder.*` names."""
        return {ENCODER_PREFIX + k.replace(".qkv.base.", ".qkv."): v.detach()
                for k, v in self.encoder.state_dict().items()
                if ".lora_" not in k and ".expert_" not in k and ".fuser." not in k}

    def _load_pretrained(self, path: Path, sha256: str | None) -> None:
        tensors, header = read_sam_weights(path, sha256)
        other = {"sam2": "sam2", "sam2-encoder": "sam2", "tinyvit-sam": "tinyvit", "tinyvit-sam-encoder": "tinyvit"}
        if header.get("format") in other:
            raise CheckpointError(f"{path}: holds another image encoder (format {header['format']!r}); use the "
                                  f"`{other[header['format']]}` backbone for it, or import a segment-anything .pth")
        if header.get("variant", self.variant) != self.variant:
            raise CheckpointError(f"{path}: header variant is {header['variant']!r}, "
                                  f"but the backbone is configured as {self.variant!r}")
        found = {k[len(ENCODER_PREFIX):]: v for k, v in tensors.items() if k.startswith(ENCODER_PREFIX)}
        if not found:
            raise CheckpointError(f"{path}: holds no image_encoder.* tensors; expected an imported SAM checkpoint")
        fitted = fit_encoder_state(found, self.encoder.state_dict(),
                                   SAM_PRESETS[self.variant].global_attn_indexes, Path(path))
        self.encoder.load_state_dict(fitted)


def build_sam_backbone(config: SamBackboneConfig, *, fuser: FuserFactory | None = None) -> SamBackbone:
    """SAM ViT image encoder, frozen, with SAMed-style LoRA on q/v (or fused frozen LoRA experts)."""
    return SamBackbone(config, fuser=fuser)
