"""Frozen SAM2 Hiera image encoder (trunk + FPN neck) with LoRA or fused LoRA experts on the trunk."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING
from unittest import mock

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from samora_kit.api import CheckpointError, FeaturePyramid, SamoraError, require
from samora_kit_plugins.lora import ExpertHost, FuserFactory
from samora_kit_plugins.sam_weights import read_sam_weights

from .config import POS_TARGET, Sam2BackboneConfig, config_source, image_encoder_node, trunk_values

if TYPE_CHECKING:  # sam2 is an optional extra: imported where a trunk is built
    from sam2.modeling.backbones.hieradet import Hiera
    from sam2.modeling.backbones.image_encoder import FpnNeck

ENCODER_PREFIX = "image_encoder."
# SAM2 normalises [0, 1] images with the ImageNet statistics (sam2.utils.transforms.SAM2Transforms)
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)


def build_trunk_and_neck(variant: str, config_file: Path | None = None) -> tuple[Hiera, FpnNeck, int]:
    """The official sam2 Hiera trunk, FpnNeck and scalp of `variant` (or `config_file`), random weights."""
    require("sam2", "SAM2's Hiera image encoder")
    from sam2.modeling.backbones.hieradet import Hiera
    from sam2.modeling.backbones.image_encoder import FpnNeck
    from sam2.modeling.position_encoding import PositionEmbeddingSine

    node = image_encoder_node(variant, config_file)
    source = config_source(variant, config_file)
    trunk = _construct(Hiera, trunk_values(node), source, "trunk")
    neck_values = _values(node.neck)
    position = neck_values.pop("position_encoding", None)
    if not isinstance(position, dict) or position.get("_target_") != POS_TARGET:
        raise SamoraError(f"{source}: model.image_encoder.neck.position_encoding must be a {POS_TARGET} node")
    neck_values["position_encoding"] = _construct(PositionEmbeddingSine, _values(position), source,
                                                  "neck.position_encoding")
    neck = _construct(FpnNeck, neck_values, source, "neck")
    scalp = int(node.get("scalp", 0))
    if list(trunk.channel_list) != list(neck.backbone_channel_list):
        raise SamoraError(f"{source}: neck.backbone_channel_list {list(neck.backbone_channel_list)} does not match "
                          f"the trunk's stage widths {list(trunk.channel_list)} (deepest first)")
    if len(neck.convs) - scalp != 3:
        raise SamoraError(f"{source}: the image encoder gives {len(neck.convs) - scalp} FPN levels after scalp "
                          f"{scalp}; expected 3 (strides 4, 8, 16), as sam2.1 configs do with scalp: 1")
    return trunk, neck, scalp


def reference_encoder_state(variant: str, config_file: Path | None = None) -> dict[str, torch.Tensor]:
    """Official `image_encoder.*` names and shapes (meta tensors, no memory, no init time)."""
    real_linspace = torch.linspace
    # Hiera reads drop-path rates with linspace(...).item(), which meta tensors cannot answer
    with mock.patch.object(torch, "linspace", partial(real_linspace, device="cpu")), torch.device("meta"):
        trunk, neck, _ = build_trunk_and_neck(variant, config_file)
    state = {f"{ENCODER_PREFIX}trunk.{k}": v for k, v in trunk.state_dict().items()}
    state.update({f"{ENCODER_PREFIX}neck.{k}": v for k, v in neck.state_dict().items()})
    return state


def _values(node) -> dict:
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    return {k: v for k, v in values.items() if k != "_target_"}


def _construct(cls, values: dict, source: str, where: str):
    try:
        return cls(**values)
    except (TypeError, ValueError, AssertionError) as exc:
        raise SamoraError(f"{source}: model.image_encoder.{where} {values} does not build a "
                          f"{cls.__name__} ({type(exc).__name__}: {exc})") from None


class Sam2Backbone(ExpertHost, nn.Module):
    """Input B,3,S,S in [0, 1], normalised inside with SAM2's ImageNet mean/std; output a FeaturePyramid:
    embedding = backbone_fpn[2] (B,d_model,S/16,S/16), high_res = (backbone_fpn[0] B,d_model,S/4,S/4,
    backbone_fpn[1] B,d_model,S/8,S/8): raw FPN maps (no no_mem_embed, no conv_s0/conv_s1).

    `encoder` is the Hiera trunk (frozen; its blocks carry the LoRA), `neck` the FPN neck (frozen).
    Without `config.experts`: one trainable LoRA on each chosen block's attn.qkv (SAMed-2, stage 1).
    With it: K frozen LoRA experts per chosen block and one fuser per block (from `fuser`)."""

    def __init__(self, config: Sam2BackboneConfig, fuser: FuserFactory | None = None) -> None:
        super().__init__()
        self.variant = config.variant
        self.config_file = config.config_file
        self.image_size = config.image_size
        self.checkpoint_path: Path | None = config.checkpoint
        self.lora_rank = config.lora.rank
        self.lora_targets = tuple(t for t in ("q", "k", "v") if t in config.lora.targets)
        self.lora_blocks = config.lora_block_indexes()
        self.experts_config = config.experts
        self.encoder, self.neck, self.scalp = build_trunk_and_neck(config.variant, config.config_file)
        self.embed_channels = self.neck.d_model
        self.embed_stride = 16  # the FPN level every decoder reads
        self.embed_grid = config.image_size // self.embed_stride
        self.high_res_channels = (self.neck.d_model, self.neck.d_model)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)
        if config.checkpoint is not None:
            self._load_pretrained(config.checkpoint, config.checkpoint_sha256)
        self.encoder.requires_grad_(False)
        self.neck.requires_grad_(False)
        self.adapt_blocks(config, fuser, _install_hiera_experts, "build_sam2_backbone")

    def forward(self, images: torch.Tensor) -> FeaturePyramid:
        self._check_images(images)
        features, _ = self.neck(self.encoder((images - self.pixel_mean) / self.pixel_std))
        if self.scalp > 0:
            features = features[: -self.scalp]
        return FeaturePyramid(embedding=features[2], high_res=(features[0], features[1]))

    def _check_images(self, images: torch.Tensor) -> None:
        expected = (3, self.image_size, self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"SAM2 backbone expects images B,{','.join(map(str, expected))}; "
                             f"got {tuple(images.shape)}")

    @property
    def depth(self) -> int:
        return len(self.encoder.blocks)

    def shape_description(self) -> dict:
        """What an expert pack must match: name, variant, image size, first width, depth, and each
        block's [C_in, C_out] (Hiera doubles the width at every stage)."""
        return {"name": "sam2", "variant": self.variant, "image_size": self.image_size,
                "embed_dim": int(self.encoder.blocks[0].dim), "depth": self.depth,
                "block_dims": [[int(b.dim), int(b.dim_out)] for b in self.encoder.blocks]}

    # --- PretrainableBackbone (block_channels and block_outputs come from ExpertHost) ---------------

    @property
    def token_channels(self) -> int:
        return self.embed_channels

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The stride-16 FPN map, channels-last: B,3,S,S -> B, S/16, S/16, d_model."""
        return self(images).embedding.permute(0, 2, 3, 1)

    def default_skip_blocks(self) -> list[int]:
        """The last block of each of the first three stages (strides 4, 8, 16)."""
        return list(self.encoder.stage_ends[:3])

    # --- weights -------------------------------------------------------------------------------------

    ENCODER_ONLY_FORMAT = "sam2-encoder"  # what a self-pre-trained base of this backbone is saved as
    BACKBONE_PACKAGE = "sam2"  # where the architecture comes from: expert packs record its version

    def encoder_state_in_official_layout(self) -> dict[str, torch.Tensor]:
        """The trunk and neck weights (no LoRA) under SAM2's official `image_encoder.*` names."""
        state = {f"trunk.{k}": v for k, v in self.encoder.state_dict().items()}
        state.update({f"neck.{k}": v for k, v in self.neck.state_dict().items()})
        return {ENCODER_PREFIX + k.replace(".qkv.base.", ".qkv."): v.detach() for k, v in state.items()
                if ".lora_" not in k and ".expert_" not in k and ".fuser." not in k}

    def _load_pretrained(self, path: Path, sha256: str | None) -> None:
        tensors, header = read_sam_weights(path, sha256)
        if header.get("format") not in ("sam2", self.ENCODER_ONLY_FORMAT):
            raise CheckpointError(f"{path}: header format is {header.get('format')!r}, expected 'sam2' (import it "
                                  f"with `samora-kit weights import --format sam2`) or {self.ENCODER_ONLY_FORMAT!r}")
        if self.config_file is None and header.get("variant", self.variant) != self.variant:
            raise CheckpointError(f"{path}: holds a SAM2 {header['variant']!r} image encoder, "
                                  f"but the backbone is configured as variant {self.variant!r}")
        found = {k[len(ENCODER_PREFIX):]: v for k, v in tensors.items() if k.startswith(ENCODER_PREFIX)}
        if not found:
            raise CheckpointError(f"{path}: holds no image_encoder.* tensors; expected an imported SAM2 checkpoint")
        for prefix, module in (("trunk.", self.encoder), ("neck.", self.neck)):
            own = module.state_dict()
            part = {k[len(prefix):]: v for k, v in found.items() if k.startswith(prefix)}
            check_state(part, own, f"{path}", ENCODER_PREFIX + prefix)
            module.load_state_dict(part)


def check_state(found: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], source: str,
                prefix: str) -> None:
    """CheckpointError naming the first missing, unexpected or misshaped `prefix`key of `found`."""
    for key in sorted(set(reference) | set(found)):
        if key not in found:
            raise CheckpointError(f"{source}: missing {prefix}{key} (shape {tuple(reference[key].shape)})")
        if key not in reference:
            raise CheckpointError(f"{source}: unexpected {prefix}{key} for this SAM2 image encoder")
        if tuple(found[key].shape) != tuple(reference[key].shape):
            raise CheckpointError(f"{source}: {prefix}{key} has shape {tuple(found[key].shape)}, "
                                  f"expected {tuple(reference[key].shape)}")


def build_sam2_backbone(config: Sam2BackboneConfig, *, fuser: FuserFactory | None = None) -> Sam2Backbone:
    """SAM2 Hiera image encoder + FPN neck, frozen, with LoRA on the trunk's qkv (or fused frozen experts)."""
    return Sam2Backbone(config, fuser=fuser)


def _install_hiera_experts(*block_and_experts):
    from .experts import install_hiera_experts  # imports sam2, checked by build_trunk_and_neck

    return install_hiera_experts(*block_and_experts)
