"""Fit a 1024-px SAM image encoder state dict to a smaller model (SAMed's `load_from`)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F

from samora_kit.api import CheckpointError

GLOBAL_REL_POS = re.compile(r"blocks\.(\d+)\.attn\.rel_pos_[hw]")


def resize_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """1, G, G, C -> 1, grid, grid, C (bilinear)."""
    chw = pos_embed.permute(0, 3, 1, 2)  # 1, C, G, G
    resized = F.interpolate(chw, size=(grid, grid), mode="bilinear", align_corners=False)
    return resized.permute(0, 2, 3, 1)


def resize_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """2G-1, head_dim -> length, head_dim (bilinear, as SAMed)."""
    resized = F.interpolate(rel_pos[None, None], size=(length, rel_pos.shape[1]), mode="bilinear",
                            align_corners=False)
    return resized[0, 0]


def fit_encoder_state(found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                      global_blocks: tuple[int, ...], source: Path) -> dict[str, torch.Tensor]:
    """Return `found` with pos_embed and global rel_pos resized to `expected`'s shapes;
    any other difference is another architecture and raises CheckpointError."""
    fitted = {}
    for key in sorted(set(expected) | set(found)):
        if key not in found:
            raise CheckpointError(f"{source}: missing image_encoder.{key} "
                                  f"(expected shape {tuple(expected[key].shape)}); the file is another architecture")
        if key not in expected:
            raise CheckpointError(f"{source}: unexpected image_encoder.{key} (found shape {tuple(found[key].shape)}); "
                                  "the file is another architecture")
        tensor, want = found[key], expected[key].shape
        if tensor.shape != want and _resizable(key, tensor.shape, want, global_blocks):
            tensor = (resize_pos_embed(tensor, want[1]) if key == "pos_embed"
                      else resize_rel_pos(tensor, want[0]))
        if tensor.shape != want:
            raise CheckpointError(f"{source}: image_encoder.{key} has shape {tuple(found[key].shape)}, "
                                  f"expected {tuple(want)}; the file is another architecture")
        fitted[key] = tensor.to(expected[key].dtype)
    return fitted


def _resizable(key: str, have: torch.Size, want: torch.Size, global_blocks: tuple[int, ...]) -> bool:
    if key == "pos_embed":
        return len(have) == 4 and have[0] == 1 and have[1] == have[2] and have[3] == want[3]
    match = GLOBAL_REL_POS.fullmatch(key)
    # windowed blocks' rel_pos depends on the window, not the image size: never resized
    return (match is not None and int(match.group(1)) in global_blocks
            and len(have) == 2 and have[1] == want[1])
