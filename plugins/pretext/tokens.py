"""Patch grids shared by the patch-level task and the MAE teacher.

Convention everywhere: a token grid is B, gh, gw, D with token (i, j) covering pixels
[i*p:(i+1)*p, j*p:(j+1)*p] (row-major, as both SAM's and timm's patch embeddings produce); flattened
sequences are B, gh*gw, D in that same row-major order.
"""

from __future__ import annotations

import torch


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """B,C,H,W -> B, gh, gw, p*p*C (pixels of patch (i, j), ordered p_row, p_col, channel as MAE)."""
    b, c, h, w = images.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not a multiple of the {patch}-px patch")
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, h // patch, w // patch, patch * patch * c)


def random_patch_mask(batch: int, grid: int, ratio: float, device=None) -> torch.Tensor:
    """B, grid, grid bool, True = masked; exactly round(ratio * grid**2) patches per image (global RNG)."""
    n = grid * grid
    n_masked = int(round(ratio * n))
    order = torch.rand(batch, n, device=device).argsort(dim=1)
    mask = torch.zeros(batch, n, dtype=torch.bool, device=device)
    mask.scatter_(1, order[:, :n_masked], True)
    return mask.view(batch, grid, grid)


def blank_patches(images: torch.Tensor, mask: torch.Tensor, patch: int, fill: str = "mean") -> torch.Tensor:
    """Replace the masked patches' pixels by 0 or by the image's per-channel mean."""
    pixel_mask = mask.repeat_interleave(patch, 1).repeat_interleave(patch, 2)[:, None]  # B, 1, H, W
    value = images.mean(dim=(2, 3), keepdim=True) if fill == "mean" else torch.zeros_like(images[:, :, :1, :1])
    return torch.where(pixel_mask, value.expand_as(images), images)

