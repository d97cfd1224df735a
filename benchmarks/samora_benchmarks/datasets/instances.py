"""What the source-domain adapters (kvasir_seg, scenes) share: their capability (InstanceSource), its item
and a Dataset whose item i is a pure function of i.

An instance item is (image 3,S,S float32 in [0, 1], masks N,S,S bool) with N >= 1 instances whose
visible regions are disjoint (a pixel belongs to at most one instance; some belong to none).
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import numpy as np
import torch
from torch.utils.data import Dataset

from samora_kit_plugins.datasets.unlabelled_pool import LUMINANCE

InstanceItem = tuple[torch.Tensor, torch.Tensor]  # image 3,S,S float32 in [0, 1]; masks N,S,S bool


@runtime_checkable
class InstanceSource(Protocol):
    """A dataset adapter for promptable (SAM-style) training on a source domain (the miniature world's
    mini-SAM): a Dataset of (image 3,S,S float32 in [0, 1], masks N,S,S bool) items, N >= 1 instances whose
    visible regions are disjoint; N varies per item (a batch keeps masks as a list). EpochAware like
    samora_kit.api.UnlabelledSource's Dataset. Prompts (points, boxes) are drawn from the masks by the trainer."""

    def instance_dataset(self, image_size: int) -> Dataset: ...


class IndexedItems(Dataset):
    """`length` items, item i = make(i, image_size). EpochAware for the training loop, but the items do
    not depend on the epoch: random views and prompts are the trainer's job."""

    def __init__(self, length: int, image_size: int, make: Callable[[int, int], object]):
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.length = length
        self.image_size = image_size
        self.make = make
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        return self.make(range(self.length)[i], self.image_size)  # range: negative indices, IndexError


def instance_masks(labels: np.ndarray, min_pixels: int) -> np.ndarray:
    """N,H,W bool: one mask per positive value of an H,W integer label map (0 = no instance) covering
    at least `min_pixels` pixels, in increasing label order; disjoint by construction."""
    areas = np.bincount(labels.ravel(), minlength=1)
    kept = np.flatnonzero(areas >= min_pixels)
    kept = kept[kept > 0]
    return labels[None] == kept[:, None, None]


def min_pixels(fraction: float, image_size: int) -> int:
    """A minimum area given as a fraction of the S x S image, in whole pixels (at least one)."""
    return max(1, int(np.ceil(fraction * image_size * image_size)))


def as_tensor_image(rgb: np.ndarray) -> torch.Tensor:
    """H,W,3 in [0, 1] (or uint8) -> float32 3,H,W in [0, 1]. NumPy only: a torch op per item costs
    more than the item where DataLoader workers and torch threads share few cores."""
    image = rgb.astype(np.float32) / 255.0 if rgb.dtype == np.uint8 else np.clip(rgb, 0.0, 1.0, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def as_instance_item(rgb: np.ndarray, masks: np.ndarray) -> InstanceItem:
    return as_tensor_image(rgb), torch.from_numpy(np.ascontiguousarray(masks, dtype=bool))


def luminance(rgb: np.ndarray) -> np.ndarray:
    """H,W,3 float in [0, 1] -> H,W float32 (Rec. 601, as the unlabelled pool reads colour pictures)."""
    return rgb.astype(np.float32, copy=False) @ LUMINANCE
