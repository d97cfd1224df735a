"""MONAI's 2D U-Net trained from scratch (backbone `unet`) with a 1x1 convolution head (decoder
`conv_head`): the model a user would pick instead of adapting SAM, run through the same segment flow."""

from samora_kit.api import hookimpl

from .backbone import MonaiUNetBackbone, MonaiUNetConfig, build_monai_unet
from .conv_head import ConvHead, ConvHeadConfig, FullResolutionFeatures, build_conv_head

__all__ = ["ConvHead", "ConvHeadConfig", "FullResolutionFeatures", "MonaiUNetBackbone", "MonaiUNetConfig",
           "build_conv_head", "build_monai_unet"]


@hookimpl
def samora_kit_register(registry) -> None:
    # "unet", not "monai_unet": the conformance suite runs pretext tasks and decoders on the first backbone
    # name in sorted order that they accept, and that must stay the tiny SAM
    registry.add("backbone", "unet", MonaiUNetConfig, build_monai_unet,
                 example={"image_size": 32, "channels": [4, 4, 8, 8, 16], "num_res_units": 1, "out_features": 4})
    registry.add("decoder", "conv_head", ConvHeadConfig, build_conv_head, example={})
