"""SimCLR-style random views as batched tensor ops: on the images' device, drawn from torch's global RNG
(so `torch.manual_seed` makes them reproducible). Images B,C,H,W in [0, 1] -> same shape, still in [0, 1]."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from samora_kit.api import ComponentConfig

REFERENCE_SIZE = 224  # blur sigmas are given in pixels of a 224-px image, as SimCLR's


class ViewAugmentConfig(ComponentConfig):
    """Random resized crop + flip + brightness/contrast jitter + Gaussian blur (SimCLR's recipe without hue/
    saturation, which grey-level scans do not have)."""

    crop_scale: tuple[float, float] = (0.2, 1.0)  # area fraction of the crop (SimCLR: 0.08-1; scans need context)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = Field(0.5, ge=0, le=1)
    jitter_p: float = Field(0.8, ge=0, le=1)
    brightness: float = Field(0.4, ge=0, le=1)  # multiply by U(1 - b, 1 + b)
    contrast: float = Field(0.4, ge=0, le=1)  # scale around the image mean by U(1 - c, 1 + c)
    blur_p: float = Field(0.5, ge=0, le=1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    @model_validator(mode="after")
    def _ranges(self) -> "ViewAugmentConfig":
        for name in ("crop_scale", "crop_ratio", "blur_sigma"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must be (low, high) with 0 < low <= high, got {(low, high)}")
        if self.crop_scale[1] > 1:
            raise ValueError(f"crop_scale is an area fraction and must be <= 1, got {self.crop_scale}")
        return self


def random_view(images: torch.Tensor, cfg: ViewAugmentConfig) -> torch.Tensor:
    """One random view of each image in the batch."""
    x = _resized_crop_and_flip(images, cfg)
    x = _jitter(x, cfg)
    return _blur(x, cfg).clamp(0.0, 1.0)


def _uniform(n: int, low: float, high: float, device) -> torch.Tensor:
    return torch.rand(n, device=device) * (high - low) + low


def _resized_crop_and_flip(x: torch.Tensor, cfg: ViewAugmentConfig) -> torch.Tensor:
    b, dev = x.shape[0], x.device
    area = _uniform(b, *cfg.crop_scale, dev)
    log_ratio = _uniform(b, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), dev)
    ratio = log_ratio.exp()
    w = (area * ratio).sqrt().clamp(max=1.0)  # crop width / image width
    h = (area / ratio).sqrt().clamp(max=1.0)
    cx = (torch.rand(b, device=dev) * 2 - 1) * (1 - w)  # crop centre in [-1, 1] coordinates
    cy = (torch.rand(b, device=dev) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(b, device=dev) < cfg.flip_p, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _jitter(x: torch.Tensor, cfg: ViewAugmentConfig) -> torch.Tensor:
    b, dev = x.shape[0], x.device
    on = (torch.rand(b, device=dev) < cfg.jitter_p).to(x.dtype)
    bright = 1 + on * _uniform(b, -cfg.brightness, cfg.brightness, dev)
    contrast = 1 + on * _uniform(b, -cfg.contrast, cfg.contrast, dev)
    x = (x * bright.view(b, 1, 1, 1)).clamp(0, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast.view(b, 1, 1, 1) + mean).clamp(0, 1)


def _blur(x: torch.Tensor, cfg: ViewAugmentConfig) -> torch.Tensor:
    b, c, h, w = x.shape
    dev = x.device
    scale = min(h, w) / REFERENCE_SIZE
    sigma = _uniform(b, *cfg.blur_sigma, dev) * scale  # B
    on = torch.rand(b, device=dev) < cfg.blur_p
    radius = max(1, min(math.ceil(3 * cfg.blur_sigma[1] * scale), (min(h, w) - 1) // 2))
    offsets = torch.arange(-radius, radius + 1, device=dev, dtype=x.dtype)  # K
    kernel = torch.exp(-0.5 * (offsets[None] / sigma.clamp(min=1e-3)[:, None]) ** 2)  # B, K
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    identity = (offsets == 0).to(x.dtype).expand(b, -1)
    kernel = torch.where(on[:, None], kernel, identity)  # unblurred images get a delta kernel
    kernel = kernel.repeat_interleave(c, dim=0)  # B*C, K: one depthwise filter per image channel
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kernel.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kernel.view(b * c, 1, -1, 1), groups=b * c)
    return y.view(b, c, h, w)
