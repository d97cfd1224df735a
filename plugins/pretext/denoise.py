"""Pixel-level pretext task: denoise a noisy slice through the SAM encoder + LoRA and a U-Net-style decoder.

noisy = clip(image + sigma * N(0, 1)) -> encoder + LoRA (one pass, intermediate blocks tapped) -> decoder
-> sigmoid -> B,1|3,S,S; loss = MSE against the clean image (paper Eq. 1).

Two deliberate differences from the authors' code (anchor-implementations §1, pixel level):
- the decoder has skip connections from intermediate encoder blocks (theirs used the neck output only);
- output (sigmoid) and target (the clean image) share the [0, 1] range (theirs z-scored the target).

Skips in a ViT: every encoder block works at the same g x g patch grid (g = S / 16), so unlike a
convolutional U-Net there are no higher-resolution encoder features. Each tapped block output (B,g,g,E)
is layer-normed and projected to the width of the decoder stage it joins, bilinearly upsampled to that
stage's resolution, concatenated with the upsampled decoder features and convolved. As in a U-Net the
deepest tapped block joins the coarsest stage. The noisy image itself is deliberately not a skip: a
full-resolution image path would let the decoder denoise on its own and starve the LoRA of gradient.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from samora_kit.errors import SamoraError
from samora_kit.registry import ComponentConfig

from .task_base import PretextTaskBase

NAME = "denoise"
UPSAMPLING_STAGES = 4  # x2 each: from the 1/16 patch grid back to the image size
RANGE_TOLERANCE = 1e-3  # slack when checking that input images are in [0, 1]
EXAMPLE = {"sigma": 0.1, "decoder_channels": [32, 16, 16, 8]}


class DenoiseConfig(ComponentConfig):
    sigma: float = Field(0.1, gt=0.0, le=1.0)  # Gaussian noise std, in the [0, 1] image range
    clip: bool = True                          # clip the noisy image back to [0, 1]
    skip_blocks: list[int] | None = None       # encoder blocks feeding skips (any order); None: 2, 5, 8 of 12
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


def default_skip_blocks(depth: int) -> list[int]:
    """Ends of the first three quarters of the encoder: 2, 5, 8 of 12 (SAM ViT-B's first three global-attention
    blocks; likewise for ViT-L/H); 0, 1, 2 of 4 for the tiny test encoder."""
    return sorted({depth * k // 4 - 1 for k in (1, 2, 3)} - {-1})


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.GroupNorm(_groups(out_channels), out_channels), nn.GELU())


class SkipProjection(nn.Module):
    """One tapped block output B,g,g,E -> B,C,g,g (LayerNorm, then a per-token linear map)."""

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
    """Neck output B,Cn,g,g plus tapped blocks (B,g,g,E each, deepest first) -> B,out,16g,16g in (0, 1)."""

    def __init__(self, neck_channels: int, embed_dim: int, num_skips: int, channels: list[int],
                 out_channels: int) -> None:
        super().__init__()
        self.stem = conv_block(neck_channels, channels[0])
        widths = [channels[0], *channels]
        self.stages = nn.ModuleList(
            UpStage(widths[i], widths[i + 1], embed_dim if i < num_skips else None) for i in range(len(channels)))
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
        encoder = _vit_encoder(backbone)
        depth = len(encoder.blocks)
        blocks = config.skip_blocks if config.skip_blocks is not None else default_skip_blocks(depth)
        bad = [b for b in blocks if b >= depth]
        if bad:
            raise SamoraError(f"denoise.skip_blocks {bad} out of range: the encoder has blocks 0..{depth - 1}")
        self.config = config
        self.skip_blocks = sorted(blocks, reverse=True)  # deepest first: the deepest joins the coarsest stage
        self.decoder = DenoiseDecoder(backbone.embed_channels, encoder.patch_embed.proj.out_channels,
                                      len(self.skip_blocks), config.decoder_channels, config.out_channels)

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
        """One backbone pass: (neck output B,C,g,g, tapped block outputs B,g,g,E in `skip_blocks` order)."""
        captured: dict[int, torch.Tensor] = {}
        blocks = _vit_encoder(self.backbone).blocks
        handles = [blocks[i].register_forward_hook(_capture(captured, i)) for i in self.skip_blocks]
        try:
            neck = self.backbone(images)
        finally:
            for handle in handles:
                handle.remove()
        return neck, [captured[i] for i in self.skip_blocks]


def build_denoise(config: DenoiseConfig, *, backbone: nn.Module, teacher: nn.Module | None = None) -> DenoisePretext:
    """Pixel-level pretext: denoising through encoder + LoRA and a U-Net-style decoder with block skips."""
    if teacher is not None:
        raise SamoraError("the denoise pretext task uses no teacher (its target is the clean image); "
                          f"remove the teacher from this expert (got {type(teacher).__name__})")
    return DenoisePretext(config, backbone)


def register(registry) -> None:
    registry.add("pretext", NAME, DenoiseConfig, build_denoise, example=EXAMPLE)


def _vit_encoder(backbone: nn.Module) -> nn.Module:
    encoder = getattr(backbone, "encoder", None)
    if encoder is None or not all(hasattr(encoder, a) for a in ("patch_embed", "blocks", "neck")):
        raise SamoraError(f"the denoise pretext task needs a SAM ViT backbone (encoder with patch_embed, blocks "
                          f"and neck); got {type(backbone).__name__}")
    return encoder


def _capture(store: dict[int, torch.Tensor], index: int):
    def hook(module, inputs, output):
        store[index] = output  # B, g, g, E
    return hook


def _check_range(images: torch.Tensor) -> None:
    low, high = torch.aminmax(images.detach())
    if low < -RANGE_TOLERANCE or high > 1.0 + RANGE_TOLERANCE:
        raise ValueError(f"denoise expects images in [0, 1] (the target shares the sigmoid's range); "
                         f"got values in [{low.item():.3g}, {high.item():.3g}]")


def _groups(channels: int) -> int:
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)
