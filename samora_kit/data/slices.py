"""2D slices of Volumes as model inputs, with augmentation that is a pure function of (seed, epoch, index)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch.utils.data import Dataset

from ..errors import DataError
from ..registry import ComponentConfig
from .volume import Volume

UNLABELLED = -1  # label value of every pixel of a slice whose volume has no label map


class AugmentConfig(ComponentConfig):
    """Random 2D augmentation, applied at the slice's native size before resizing."""

    enabled: bool = True
    rotate_degrees: float = Field(default=20.0, ge=0.0, le=180.0)  # uniform in [-d, d]
    rotate_prob: float = Field(default=0.5, ge=0.0, le=1.0)
    scale_range: tuple[float, float] = (0.85, 1.15)
    scale_prob: float = Field(default=0.5, ge=0.0, le=1.0)
    elastic_prob: float = Field(default=0.2, ge=0.0, le=1.0)
    # Elastic sizes are fractions of the slice's longer side, so one setting suits 36 px and 512 px slices.
    elastic_spacing: float = Field(default=0.2, gt=0.0, le=1.0)  # control-point spacing: the smoothness
    elastic_magnitude_range: tuple[float, float] = (0.0, 0.02)     # control-point offset (std), low..high

    @field_validator("scale_range")
    @classmethod
    def _scale_is_positive_and_ordered(cls, pair):
        if not 0.0 < pair[0] <= pair[1]:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {pair}")
        return pair

    @field_validator("elastic_magnitude_range")
    @classmethod
    def _magnitude_is_ordered(cls, pair):
        if not 0.0 <= pair[0] <= pair[1]:
            raise ValueError(f"elastic_magnitude_range must be (low, high) with 0 <= low <= high, got {pair}")
        return pair


def slice_to_model_input(slice_hw: np.ndarray, image_size: int) -> torch.Tensor:
    """One H,W slice in [0, 1] -> float32 3,S,S (bicubic, clamped to [0, 1], grey repeated to RGB)."""
    image = torch.as_tensor(np.asarray(slice_hw, dtype=np.float32))[None, None]  # 1, 1, H, W
    resized = F.interpolate(image, size=(image_size, image_size), mode="bicubic", align_corners=False)
    return resized[0].clamp_(0.0, 1.0).expand(3, -1, -1).contiguous()


def label_to_model_size(label_hw: np.ndarray | torch.Tensor, image_size: int) -> torch.Tensor:
    """One H,W label map -> int64 S,S (nearest neighbour)."""
    label = torch.as_tensor(np.asarray(label_hw), dtype=torch.float32)[None, None]  # 1, 1, H, W
    resized = F.interpolate(label, size=(image_size, image_size), mode="nearest")
    return resized[0, 0].round().to(torch.int64)


class SliceDataset(Dataset):
    """One item per slice of every volume: (image 3,S,S float32 in [0, 1], label S,S int64)."""

    def __init__(self, volumes: list[Volume], image_size: int, augment: AugmentConfig | None = None,
                 seed: int = 0, foreground_only: bool = False):
        if foreground_only and any(v.label is None for v in volumes):
            missing = next(v for v in volumes if v.label is None)
            raise DataError(f"{missing.source or missing.case_id}: foreground_only needs a label map")
        self.volumes = volumes
        self.image_size = image_size
        self.augment = augment if augment is not None and augment.enabled else None
        self.seed = seed
        self.epoch = 0
        self.index = [(v, z) for v, volume in enumerate(volumes) for z in range(volume.image.shape[0])
                      if not foreground_only or volume.label[z].any()]  # (volume index, slice index)
        self._transforms: dict[tuple[int, int], object] = {}  # per slice shape: elastic sizes depend on it

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose augmentation draws the next items use."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        v, z = self.index[i]
        volume = self.volumes[v]
        image = volume.image[z]  # H, W
        label = volume.label[z] if volume.label is not None else np.full(image.shape, UNLABELLED, np.int64)
        if self.augment is not None:
            image, label = self._augmented(image, label, i)
        return slice_to_model_input(image, self.image_size), label_to_model_size(label, self.image_size)

    def item_seed(self, i: int) -> int:
        """The seed of item i this epoch; the same in every process."""
        entropy = [self.seed & 0xFFFFFFFF, self.epoch, i]
        return int(np.random.SeedSequence(entropy).generate_state(1)[0])

    def _augmented(self, image: np.ndarray, label: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
        transform = self._transform_for(image.shape)
        transform.set_random_state(seed=self.item_seed(i))
        sample = transform({"image": np.asarray(image, np.float32)[None],      # 1, H, W
                            "label": np.asarray(label, np.float32)[None]})
        return _plain(sample["image"])[0], _plain(sample["label"])[0].round().astype(np.int64)

    def _transform_for(self, shape: tuple[int, int]):
        if shape not in self._transforms:
            self._transforms[shape] = build_augmentation(self.augment, shape)
        return self._transforms[shape]


def build_augmentation(config: AugmentConfig, shape_hw: tuple[int, int]):
    """MONAI dictionary transforms over {"image", "label"} (1,H,W): bilinear image, nearest label."""
    from monai.transforms import Compose, Rand2DElasticd, RandRotated, RandZoomd  # slow import, only when used

    keys = ("image", "label")
    side = max(shape_hw)
    spacing = max(2, round(config.elastic_spacing * side))
    magnitude = tuple(m * side for m in config.elastic_magnitude_range)
    return Compose([
        RandRotated(keys, range_x=math.radians(config.rotate_degrees), prob=config.rotate_prob,
                    mode=("bilinear", "nearest"), padding_mode="zeros", keep_size=True),
        RandZoomd(keys, prob=config.scale_prob, min_zoom=config.scale_range[0], max_zoom=config.scale_range[1],
                  mode=("bilinear", "nearest"), padding_mode="constant", keep_size=True),
        Rand2DElasticd(keys, spacing=(spacing, spacing), magnitude_range=magnitude, prob=config.elastic_prob,
                       mode=("bilinear", "nearest"), padding_mode="reflection"),
    ])


def _plain(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.as_tensor() if hasattr(array, "as_tensor") else array
        return array.detach().cpu().numpy()
    return np.asarray(array)
