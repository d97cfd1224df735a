"""Frozen TinyViT-SAM image encoder (LiteMedSAM, MobileSAM) with LoRA on the fused qkv of its attention
blocks, or K frozen LoRA experts and a fuser in each."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from samora_kit.api import CheckpointError
from samora_kit_plugins.lora import ExpertHost, FuserFactory
from samora_kit_plugins.sam_weights import read_sam_weights

from .config import TinyViTBackboneConfig
from .experts import install_tinyvit_experts
from .layout import kit_to_official, official_to_kit
from .model import TinyViTEncoder

FORMAT = "tinyvit-sam"  # an imported LiteMedSAM / MobileSAM checkpoint (encoder, prompt encoder, mask decoder)
ENCODER_FORMAT = "tinyvit-sam-encoder"  # a TinyViT encoder the kit pre-trained itself


class TinyViTBackbone(ExpertHost, nn.Module):
    """Input B,3,S,S in [0, 1], fed as is (LiteMedSAM was trained on [0, 1] images); output B,256,S/s,S/s with
    s = 4 (LiteMedSAM) or 16 (MobileSAM). Also a PretrainableBackbone: `tokens`, `block_outputs`,
    `default_skip_blocks`.

    `encoder.blocks` are the attention blocks of stages 1-3 (10 for TinyViT-5M, widths 128, 160, 320):
    without `config.experts` each gets one trainable LoRA (SAMed, stage 1); with it, K frozen LoRA experts
    and one fuser each, the only trainable part. Stage 0 (MBConv), the patch mergings and the neck stay frozen."""

    ENCODER_ONLY_FORMAT = ENCODER_FORMAT  # what a self-pre-trained base of this backbone is saved as
    BACKBONE_PACKAGE = "timm"  # the TinyViT parts come from timm: expert packs record its version

    def __init__(self, config: TinyViTBackboneConfig, fuser: FuserFactory | None = None) -> None:
        super().__init__()
        preset = config.preset
        self.variant = config.variant
        self.preset = preset
        self.image_size = config.image_size
        self.embed_channels = preset.out_chans
        self.embed_stride = preset.stride
        self.embed_grid = config.image_size // preset.stride
        self.checkpoint_path: Path | None = config.checkpoint
        self.lora_rank = config.lora.rank
        self.lora_targets = tuple(t for t in ("q", "k", "v") if t in config.lora.targets)
        self.lora_blocks = config.lora_block_indexes()
        self.experts_config = config.experts
        self.trains_whole_encoder = False
        self.encoder = TinyViTEncoder(preset)
        if config.checkpoint is not None:
            self._load_pretrained(config.checkpoint, config.checkpoint_sha256)
        self.encoder.requires_grad_(False)
        self.adapt_blocks(config, fuser, install_tinyvit_experts, "build_tinyvit_backbone")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self._check_images(images)
        return self.encoder(images)  # B, C, g, g

    def train(self, mode: bool = True) -> "TinyViTBackbone":
        """The frozen encoder's BatchNorms stay in eval mode: in training mode they would normalise with each
        batch's statistics and overwrite the pre-trained running ones, changing the frozen base (its
        fingerprint included) under the LoRA. Only base pre-training (`train_whole_encoder`) trains them."""
        super().train(mode)
        if not self.trains_whole_encoder:
            for module in self.encoder.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def train_whole_encoder(self) -> None:
        super().train_whole_encoder()
        self.trains_whole_encoder = True
        self.train(self.training)

    def _check_images(self, images: torch.Tensor) -> None:
        expected = (3, self.image_size, self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"TinyViT backbone expects images B,{','.join(map(str, expected))}; "
                             f"got {tuple(images.shape)}")

    def shape_description(self) -> dict:
        """What an expert pack must match: name, variant, image size, first width, depth, each block's widths."""
        blocks = self.encoder.blocks
        return {"name": "tinyvit", "variant": self.variant, "image_size": self.image_size,
                "embed_dim": int(blocks[0].dim), "depth": len(blocks),
                "block_dims": [[int(b.dim), int(b.dim)] for b in blocks]}

    # --- PretrainableBackbone (block_channels and block_outputs come from ExpertHost) ---------------

    @property
    def token_channels(self) -> int:
        return self.preset.embed_dims[-1]

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The last attention block's output before the neck: B,3,S,S -> B, g, g, C (the embedding grid)."""
        self._check_images(images)
        return self.encoder.tokens(images)

    def default_skip_blocks(self) -> list[int]:
        """The last block of stage 1 (stride 2 for LiteMedSAM) and of stage 2 (stride 4)."""
        stages = self.encoder.stage_of_block
        return [max(i for i, s in enumerate(stages) if s == stage) for stage in (1, 2)]

    # --- weights -------------------------------------------------------------------------------------

    def encoder_state_in_official_layout(self) -> dict[str, torch.Tensor]:
        """The encoder's own weights (no LoRA) under TinyViT-SAM's official `image_encoder.*` names and layout."""
        own = {k.replace(".qkv.base.", ".qkv."): v.detach() for k, v in self.encoder.state_dict().items()
               if ".lora_" not in k and ".expert_" not in k and ".fuser." not in k}
        return kit_to_official(own, self.preset)

    def _load_pretrained(self, path: Path, sha256: str | None) -> None:
        tensors, header = read_sam_weights(path, sha256)
        if header.get("format") not in (FORMAT, ENCODER_FORMAT):
            raise CheckpointError(f"{path}: header format is {header.get('format')!r}, expected {FORMAT!r} (import "
                                  "LiteMedSAM or MobileSAM with `samora-kit weights import --format litemedsam` or "
                                  f"`--format mobilesam`) or {ENCODER_FORMAT!r}")
        if header.get("variant", self.variant) != self.variant:
            raise CheckpointError(f"{path}: holds a TinyViT {header['variant']!r} image encoder, "
                                  f"but the backbone is configured as variant {self.variant!r}")
        found = official_to_kit(tensors, self.preset)
        if not found:
            raise CheckpointError(f"{path}: holds no image_encoder.* tensors; expected an imported TinyViT-SAM "
                                  "checkpoint")
        check_encoder_state(found, self.encoder.state_dict(), path)
        self.encoder.load_state_dict(found)


def check_encoder_state(found: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], source) -> None:
    """CheckpointError naming the first missing, unexpected or misshaped tensor (kit names) of `found`."""
    for key in sorted(set(reference) | set(found)):
        if key not in found:
            raise CheckpointError(f"{source}: missing the encoder's {key} (shape {tuple(reference[key].shape)}); "
                                  "the file is another architecture")
        if key not in reference:
            raise CheckpointError(f"{source}: unexpected encoder tensor {key}; the file is another architecture")
        if tuple(found[key].shape) != tuple(reference[key].shape):
            raise CheckpointError(f"{source}: encoder tensor {key} has shape {tuple(found[key].shape)}, "
                                  f"expected {tuple(reference[key].shape)}; the file is another architecture")


def build_tinyvit_backbone(config: TinyViTBackboneConfig, *, fuser: FuserFactory | None = None) -> TinyViTBackbone:
    """TinyViT-SAM image encoder (LiteMedSAM, MobileSAM), frozen, with LoRA on q/v (or fused frozen experts)."""
    return TinyViTBackbone(config, fuser=fuser)
