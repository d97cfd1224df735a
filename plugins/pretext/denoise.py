"""Pixel-level pretext task: denoise a noisy slice through the image encoder + LoRA and a U-Net-style decoder.

noisy = clip(image + sigma * N(0, 1)) -> encoder + LoRA (one pass, intermediate blocks tapped) -> decoder
-> sigmoid -> B,1|3,S,S; loss = MSE against the clean image (paper Eq. 1).

Two deliberate differences from the authors' code (anchor-implementations §1, pixel level):
- the decoder has skip connections from intermediate encoder blocks (theirs used the neck output only);
- output (sigmoid) and target (the clean image) share the [0, 1] range (theirs z-scored the target).

Stages: one x2 upsampling per halving of the backbone's embedding stride (4 from SAM's S/16 embedding, 2 from
LiteMedSAM's S/4), the finest widths of `decoder_channels` (its last entries) for a backbone that needs fewer.

Skips: the backbone names the blocks to tap (`default_skip_blocks`, or `skip_blocks`). In SAM's ViT every
block works at the same g x g patch grid (g = S / 16), so there are no higher-resolution encoder features;
SAM2's Hiera blocks work at strides 4, 8, 16 and 32, so its skips are multi-scale as in a U-Net. Each
tapped block output (B,h,w,E_i) is layer-normed and projected to the width of the decoder stage it joins,
bilinearly resized to that stage's resolution, concatenated with the upsampled decoder features and
convolved. As in a U-Net the deepest tapped block joins the coarsest stage. The noisy image itself is deliberately not a skip: a
full-resolution image path would let the decoder denoise on its own and starve the LoRA of gradient.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from samora_kit.api import ComponentConfig, PretrainableBackbone, SamoraError, embedding_of

from .task_base import PretextTaskBase

NAME = "denoise"
UPSAMPLING_STAGES = 4  # at most, x2 each: from a 1/16 embedding grid back to the image size
RANGE_TOLERANCE = 1e-3  # slack when checking that input images are in [0, 1]
EXAMPLE = {"sigma": 0.1, "decoder_channels": [32, 16, 16, 8]}


class DenoiseConfig(ComponentConfig):
    sigma: float = Field(0.1, gt=0.0, le=1.0)  # Gaussian noise std, in the [0, 1] image range
    clip: bool = True                          # clip the noisy image back to [0, 1]
    skip_blocks: list[int] | None = None       # encoder blocks feeding skips (any order); None: the backbone's choice
    decoder_channels: list[int] = Field(default_factory=lambda: [128, 64, 32, 16],
                                        min_length=UPSAMPLING_STAGES, max_length=UPSAMPLING_STAGES)
    out_channels: Literal[1, 3] = 3            # 1: predict the grey (channel-mean) image

    @field_validator("decoder_channels")
    @classmethod
    def _positive_widths(cls, widths: list[int]) -> list[int]:
        if any(w < 1 for w in widths):
            raise ValueError(f"decoder_channels {widths} must all be positive")
        return widths

    @field_validator("skip_blocks")
    @classmethod
    def _valid_skips(cls, blocks: list[int] | None) -> list[int] | None:
        if blocks is None:
            return None
        if len(set(blocks)) != len(blocks):
            raise ValueError(f"skip_blocks {blocks} repeats a block index")
        if any(b < 0 for b in blocks):
            raise ValueError(f"skip_blocks {blocks} must be block indexes >= 0")
        if len(blocks) > UPSAMPLING_STAGES:
            raise ValueError(f"skip_blocks {blocks}: at most {UPSAMPLING_STAGES} skips, one per decoder stage")
        return blocks


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.GroupNorm(_groups(out_channels), out_channels), nn.GELU())


class SkipProjection(nn.Module):
    """One tapped block output B,h,w,E -> B,C,h,w (LayerNorm, then a per-token linear map)."""

    def __init__(self, embed_dim: int, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)
        self.proj = nn.Linear(embed_dim, channels)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(tokens)).permute(0, 3, 1, 2)  # B, C, g, g


class UpStage(nn.Module):
    """x2 transposed convolution, optional skip (projected, upsampled, concatenated), two 3x3 convolutions."""

    def __init__(self, in_channels: int, out_channels: int, skip_dim: int | None) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.skip = SkipProjection(skip_dim, out_channels) if skip_dim is not None else None
        self.fuse = conv_block(2 * out_channels if self.skip is not None else out_channels, out_channels)
        self.refine = conv_block(out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = self.up(x)  # B, C, 2h, 2w
        if self.skip is not None:
            s = F.interpolate(self.skip(skip), size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = torch.cat([x, s], dim=1)
        x = self.fuse(x)
        return x + self.refine(x)


class DenoiseDecoder(nn.Module):
    """Neck output B,Cn,g,g plus tapped blocks (B,h,w,E_i each, deepest first; `skip_dims` are the E_i)
    -> B,out,2^n g,2^n g in (0, 1), n = len(channels) upsampling stages."""

    def __init__(self, neck_channels: int, skip_dims: list[int], channels: list[int], out_channels: int) -> None:
        super().__init__()
        self.stem = conv_block(neck_channels, channels[0])
        widths = [channels[0], *channels]
        self.stages = nn.ModuleList(
            UpStage(widths[i], widths[i + 1], skip_dims[i] if i < len(skip_dims) else None)
            for i in range(len(channels)))
        self.head = nn.Conv2d(channels[-1], out_channels, 1)

    def forward(self, neck: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        x = self.stem(neck)
        for i, stage in enumerate(self.stages):
            x = stage(x, skips[i] if i < len(skips) else None)
        return torch.sigmoid(self.head(x))  # same [0, 1] range as the clean target


class DenoisePretext(PretextTaskBase):
    """images B,3,S,S in [0, 1] -> {"loss": MSE(denoised, clean), "psnr": mean per-image PSNR in dB (no grad)}."""

    def __init__(self, config: DenoiseConfig, backbone: nn.Module) -> None:
        super().__init__(backbone, teacher=None)
        _check_backbone(backbone)
        depth = len(backbone.block_channels)
        blocks = config.skip_blocks if config.skip_blocks is not None else backbone.default_skip_blocks()
        bad = [b for b in blocks if b >= depth]
        if bad:
            raise SamoraError(f"denoise.skip_blocks {bad} out of range: the encoder has blocks 0..{depth - 1}")
        stages = upsampling_stages(backbone.embed_stride)
        if len(blocks) > stages:
            raise SamoraError(f"denoise.skip_blocks {blocks}: at most {stages} skips, one per decoder stage (the "
                              f"backbone's embedding is at 1/{backbone.embed_stride} of the image: {stages} x2 stages)")
        self.config = config
        self.skip_blocks = sorted(blocks, reverse=True)  # deepest first: the deepest joins the coarsest stage
        self.decoder = DenoiseDecoder(backbone.embed_channels, [backbone.block_channels[b] for b in self.skip_blocks],
                                      config.decoder_channels[-stages:], config.out_channels)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        _check_range(images)
        noisy = self.add_noise(images)
        denoised = self.reconstruct(noisy)  # B, out, S, S
        target = images if self.config.out_channels == 3 else images.mean(dim=1, keepdim=True)
        denoised, target = denoised.float(), target.float()
        loss = F.mse_loss(denoised, target)
        with torch.no_grad():
            per_image = (denoised - target).pow(2).flatten(1).mean(1).clamp_min(1e-10)
            psnr = (-10.0 * torch.log10(per_image)).mean()  # peak value 1
        return {"loss": loss, "psnr": psnr}

    def add_noise(self, images: torch.Tensor) -> torch.Tensor:
        # one noise field shared by the channels: the kit's slices are grey repeated to RGB and stay grey
        b, _, h, w = images.shape
        noisy = images + self.config.sigma * torch.randn(b, 1, h, w, device=images.device, dtype=images.dtype)
        return noisy.clamp(0.0, 1.0) if self.config.clip else noisy

    def reconstruct(self, noisy: torch.Tensor) -> torch.Tensor:
        neck, skips = self.encode(noisy)
        return self.decoder(neck, skips)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One backbone pass: (embedding B,C,g,g, tapped block outputs B,h,w,E in `skip_blocks` order)."""
        features, skips = self.backbone.block_outputs(images, self.skip_blocks)
        return embedding_of(features), skips


def build_denoise(config: DenoiseConfig, *, backbone: nn.Module, teacher: nn.Module | None = None) -> DenoisePretext:
    """Pixel-level pretext: denoising through encoder + LoRA and a U-Net-style decoder with block skips."""
    if teacher is not None:
        raise SamoraError("the denoise pretext task uses no teacher (its target is the clean image); "
                          f"remove the teacher from this expert (got {type(teacher).__name__})")
    return DenoisePretext(config, backbone)


def register(registry) -> None:
    registry.add("pretext", NAME, DenoiseConfig, build_denoise, example=EXAMPLE)


def _check_backbone(backbone: nn.Module) -> None:
    if not isinstance(backbone, PretrainableBackbone):
        raise SamoraError(f"the denoise pretext task taps encoder blocks, so it needs a backbone with block_outputs, "
                          f"block_channels and default_skip_blocks (sam, sam2); got {type(backbone).__name__}")


def upsampling_stages(stride: int) -> int:
    """x2 stages from a 1/`stride` embedding back to the image: log2(stride), a power of 2 up to 16."""
    if stride not in (2, 4, 8, 16):
        raise SamoraError(f"the denoise decoder upsamples x2 per stage, at most {UPSAMPLING_STAGES} times; the "
                          f"backbone's embed_stride {stride} is not 2, 4, 8 or 16")
    return stride.bit_length() - 1


def _check_range(images: torch.Tensor) -> None:
    low, high = torch.aminmax(images.detach())
    if low < -RANGE_TOLERANCE or high > 1.0 + RANGE_TOLERANCE:
        raise ValueError(f"denoise expects images in [0, 1] (the target shares the sigmoid's range); "
                         f"got values in [{low.item():.3g}, {high.item():.3g}]")


def _groups(channels: int) -> int:
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)
