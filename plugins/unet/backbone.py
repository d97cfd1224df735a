"""MONAI's 2D U-Net as a backbone trained from scratch: every weight trains, none comes from a file.

The whole U-Net runs here; its output is a full-resolution feature map that the `conv_head` decoder
turns into logits. The kit's backbone contract also asks for a B,C,g,g embedding on the S/16 grid:
that is the U-Net's own bottleneck (four stride-2 levels put it exactly there)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from samora_kit.api import ComponentConfig, FeaturePyramid

if TYPE_CHECKING:  # monai is slow to import: only when a U-Net is built
    from monai.networks.nets import UNet

IN_CHANNELS = 3  # the kit feeds every backbone grey slices repeated to B,3,S,S in [0, 1]
EMBED_STRIDE = 16  # the embedding grid g = S / 16 every backbone declares


class MonaiUNetConfig(ComponentConfig):
    image_size: int = 224  # the side slices are resized to, as for SAM
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)  # top level first; the last is the bottleneck
    strides: tuple[int, ...] = (2, 2, 2, 2)  # between consecutive levels; their product must be 16
    num_res_units: int = Field(2, ge=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    out_features: int = Field(16, ge=1)  # channels of the full-resolution map the decoder reads

    @field_validator("image_size")
    @classmethod
    def _fits_the_grid(cls, size: int) -> int:
        # the bottleneck (S / 16 a side) is instance-normalised, which needs more than one pixel
        if size < 2 * EMBED_STRIDE or size % EMBED_STRIDE:
            raise ValueError(f"image_size {size} must be a multiple of {EMBED_STRIDE} and at least "
                             f"{2 * EMBED_STRIDE}, e.g. 128 or 224")
        return size

    @model_validator(mode="after")
    def _levels_match(self) -> "MonaiUNetConfig":
        if len(self.channels) < 2 or len(self.strides) != len(self.channels) - 1:
            raise ValueError(f"channels {list(self.channels)} needs one stride fewer than it has levels "
                             f"(at least two levels); got strides {list(self.strides)}")
        if min(self.channels) < 1 or min(self.strides) < 1:
            raise ValueError("channels and strides must be positive")
        if math.prod(self.strides) != EMBED_STRIDE:
            raise ValueError(f"strides {list(self.strides)} shrink the image {math.prod(self.strides)}-fold; the "
                             f"bottleneck must sit on the S/{EMBED_STRIDE} grid the kit's backbones share "
                             f"(e.g. (2, 2, 2, 2))")
        return self


class MonaiUNetBackbone(nn.Module):
    """Images B,3,S,S in [0, 1] -> FeaturePyramid(embedding: the bottleneck B,C,g,g; high_res: the
    U-Net's output B,out_features,S,S)."""

    checkpoint_path: Path | None = None  # random init: the run saves every weight

    def __init__(self, config: MonaiUNetConfig) -> None:
        from monai.networks.nets import UNet

        super().__init__()
        self.image_size = config.image_size
        self.embed_grid = config.image_size // EMBED_STRIDE
        self.embed_stride = EMBED_STRIDE
        self.embed_channels = config.channels[-1]
        self.feature_channels = config.out_features
        self.unet = UNet(spatial_dims=2, in_channels=IN_CHANNELS, out_channels=config.out_features,
                         channels=config.channels, strides=config.strides, num_res_units=config.num_res_units,
                         dropout=config.dropout)
        self.bottleneck_name = _bottom_layer_name(self.unet)  # a path, not a second registration

    def forward(self, images: torch.Tensor) -> FeaturePyramid:
        taps: list[torch.Tensor] = []
        # MONAI's UNet nests its levels; a hook reads the bottleneck without re-implementing its forward
        bottleneck = self.unet.get_submodule(self.bottleneck_name)
        handle = bottleneck.register_forward_hook(lambda module, args, out: taps.append(out))
        try:
            features = self.unet(images)  # B, out_features, S, S
        finally:
            handle.remove()
        return FeaturePyramid(taps[0], (features,))  # embedding B, C, g, g

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Every weight: the U-Net trains from scratch."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}


def _bottom_layer_name(unet: UNet) -> str:
    """The innermost SkipConnection's block: MONAI's bottleneck layer."""
    from monai.networks.layers import SkipConnection

    skips = [name for name, m in unet.named_modules() if isinstance(m, SkipConnection)]
    return f"{skips[-1]}.submodule"  # named_modules() walks depth first: the last skip is the deepest


def build_monai_unet(config: MonaiUNetConfig, *, fuser=None) -> MonaiUNetBackbone:
    """MONAI's 2D U-Net (residual units), trained from scratch; pair it with the conv_head decoder."""
    return MonaiUNetBackbone(config)
