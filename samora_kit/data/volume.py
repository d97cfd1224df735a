"""A 3D case as the kit passes it around: slices first, intensities in [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError


@dataclass
class Volume:
    case_id: str
    image: np.ndarray                 # Z, H, W float32 in [0, 1]; Z = slices along the slicing axis
    label: np.ndarray | None = None   # Z, H, W int64, values 0..num_classes
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # mm along (Z, H, W)
    source: str = ""                  # the file it came from, for messages and exports
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.image.ndim != 3:
            raise DataError(f"{self.source or self.case_id}: expected a Z,H,W image, got shape {self.image.shape}")
        if self.label is not None and self.label.shape != self.image.shape:
            raise DataError(f"{self.source or self.case_id}: label shape {self.label.shape} "
                             f"differs from image shape {self.image.shape}")
