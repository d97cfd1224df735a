"""What every dataset adapter shares: the config fields, the split lookup and the label checks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from samora_kit.api import CaseSelection, ComponentConfig, DataError, IntensityConfig, SamoraError

if TYPE_CHECKING:  # h5py is slow to import: only where a file is read
    import h5py

SPLITS = ("train", "test")


class DatasetConfig(ComponentConfig):
    root: Path
    train: CaseSelection
    test: CaseSelection
    intensity: IntensityConfig = Field(default_factory=IntensityConfig)
    num_classes: int | None = Field(default=None, ge=1)  # checked against the labels the data declares


class SplitCases:
    """`cases(split)` over ids resolved once, when the adapter is built, so recipe errors surface early."""

    def __init__(self, splits: dict[str, list[str]]):
        self._splits = splits

    def cases(self, split: str) -> list[str]:
        if split not in self._splits:
            raise SamoraError(f"unknown split {split!r}; expected one of {', '.join(self._splits)}")
        return list(self._splits[split])


def check_num_classes(configured: int | None, declared: int, where: str) -> int:
    if configured is not None and configured != declared:
        raise DataError(f"{where}: the recipe says num_classes = {configured}, "
                        f"but the data declares {declared} foreground classes")
    return declared


def existing_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: no such folder; expected {what}")
    return path


def checked_label(label: np.ndarray, num_classes: int, source: str) -> np.ndarray:
    """Return label as int64 after checking that every value is an integer in 0..num_classes."""
    values = np.unique(label)
    if np.issubdtype(values.dtype, np.floating):
        fractional = values[values != np.round(values)]
        if fractional.size:
            raise DataError(f"{source}: label map has non-integer values {_listed(fractional)}")
    outside = values[(values < 0) | (values > num_classes)]
    if outside.size:
        raise DataError(f"{source}: label values {_listed(outside)} are outside 0..{num_classes} "
                        f"(the dataset declares {num_classes} foreground classes)")
    return label.astype(np.int64)


def check_same_shape(image: np.ndarray, label: np.ndarray, image_source: str, label_source: str) -> None:
    if image.shape != label.shape:
        raise DataError(f"image {image_source} has shape {image.shape} but label {label_source} "
                        f"has shape {label.shape}; they must match voxel for voxel")


def _listed(values: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:limit].tolist())
    return f"[{shown}{', ...' if values.size > limit else ''}]"


def h5_datasets(path: Path, take: Callable[[h5py.Dataset], Any] = lambda d: d[()]) -> tuple[Any, Any]:
    """`take` of the `image` and `label` datasets of an HDF5 file: their arrays by default, or e.g. only
    their shapes; a missing file or dataset, or a broken file, is a DataError naming the file."""
    import h5py

    if not path.is_file():
        raise DataError(f"{path}: no such HDF5 file")
    try:
        with h5py.File(path, "r") as h5:
            missing = [key for key in ("image", "label") if key not in h5]
            if missing:
                raise DataError(f"{path}: missing dataset(s) {missing}; found {list(h5.keys())}, "
                                "expected 'image' and 'label'")
            return take(h5["image"]), take(h5["label"])
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path}: unreadable or truncated HDF5 file ({exc})") from None


def read_h5_pair(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, label) from an HDF5 file with 3D datasets `image` and `label`."""
    image, label = h5_datasets(path)
    image, label = np.asarray(image, dtype=np.float32), np.asarray(label)
    if image.ndim != 3:
        raise DataError(f"{path}: expected a 3D (slices, H, W) 'image', got shape {image.shape}")
    return image, label
