"""A 1x1 convolution from a backbone's full-resolution feature map to class logits (the U-Net's head)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

from samora_kit.api import ComponentConfig, FeaturePyramid, SamoraError


@runtime_checkable
class FullResolutionFeatures(Protocol):
    """A backbone whose FeaturePyramid's finest level is a B,feature_channels,S,S map (unet)."""

    image_size: int
    feature_channels: int


class ConvHeadConfig(ComponentConfig):
    pass


class ConvHead(nn.Module):
    """FeaturePyramid with high_res[0] B,C,S,S -> logits B,num_classes+1,S,S (channel 0 = background)."""

    def __init__(self, num_classes: int, channels: int, image_size: int) -> None:
        from monai.networks.blocks import UnetOutBlock  # monai is slow to import: only when built

        super().__init__()
        self.num_classes = num_classes
        self.channels, self.image_size = channels, image_size
        self.head = UnetOutBlock(spatial_dims=2, in_channels=channels, out_channels=num_classes + 1)

    def forward(self, features: FeaturePyramid) -> torch.Tensor:
        finest = features.high_res[0] if isinstance(features, FeaturePyramid) and features.high_res else None
        if finest is None or finest.shape[1] != self.channels or finest.shape[-1] != self.image_size:
            got = tuple(finest.shape) if finest is not None else type(features).__name__
            raise ValueError(f"conv_head expects a FeaturePyramid whose high_res[0] is B,{self.channels},"
                             f"{self.image_size},{self.image_size}; got {got}")
        return self.head(finest)


def build_conv_head(config: ConvHeadConfig, *, backbone, num_classes: int) -> ConvHead:
    """A 1x1 convolution to num_classes + 1 logits at the image size, on a full-resolution backbone (unet)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 (foreground classes), got {num_classes}")
    if not isinstance(backbone, FullResolutionFeatures):
        raise SamoraError(f'decoder.name = "conv_head" needs a backbone with a full-resolution feature map '
                          f'(backbone.name = "unet"); {type(backbone).__name__} has no feature_channels')
    return ConvHead(num_classes, backbone.feature_channels, backbone.image_size)
