"""Map raw scanner intensities to float32 in [0, 1]: a fixed window for CT, per-volume percentiles for MR."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import field_validator

from ..errors import DataError
from ..registry import ComponentConfig

RANGE_TOLERANCE = 1e-4  # rounding slack allowed when mode="none" checks data that claims to be in [0, 1]
TORCH_QUANTILE_MAX = 1_000_000  # larger volumes take np.percentile, as MONAI's percentile does (pytorch#64947)


class IntensityConfig(ComponentConfig):
    """How to bring a volume to [0, 1]. "auto" picks "ct" for a CT modality, else "mr"."""

    mode: Literal["auto", "ct", "mr", "none"] = "auto"
    ct_window: tuple[float, float] = (-125.0, 275.0)  # Hounsfield units, the TransUNet/SAMed abdomen window
    percentiles: tuple[float, float] = (0.5, 99.5)

    @field_validator("ct_window")
    @classmethod
    def _window_is_increasing(cls, window):
        if window[0] >= window[1]:
            raise ValueError(f"ct_window must be (low, high) with low < high, got {window}")
        return window

    @field_validator("percentiles")
    @classmethod
    def _percentiles_are_ordered(cls, pair):
        if not 0.0 <= pair[0] < pair[1] <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {pair}")
        return pair


def resolve_mode(config: IntensityConfig, modality: str | None) -> str:
    """The concrete mode ("ct", "mr" or "none") for this modality."""
    if config.mode != "auto":
        return config.mode
    return "ct" if is_ct(modality) else "mr"


def is_ct(modality: str | None) -> bool:
    words = (modality or "").upper().replace("-", " ").replace("_", " ").split()
    return "CT" in words or "COMPUTED" in words


def normalise(array: np.ndarray, config: IntensityConfig, modality: str | None = None,
              source: str = "") -> np.ndarray:
    """Return float32 in [0, 1] with the array's shape. `source` names the file in errors."""
    where = f"{source}: " if source else ""
    data = np.asarray(array, dtype=np.float32)
    if not np.isfinite(data).all():
        raise DataError(f"{where}image contains NaN or infinite values")
    mode = resolve_mode(config, modality)
    if mode == "none":
        low, high = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
        if low < -RANGE_TOLERANCE or high > 1.0 + RANGE_TOLERANCE:
            raise DataError(f"{where}intensity.mode is 'none', so the image must already be in [0, 1], "
                            f"but its values span [{low:g}, {high:g}]; use mode 'ct' or 'mr'")
        return np.clip(data, 0.0, 1.0)
    volume = torch.from_numpy(np.require(data, requirements=["C", "W"]))  # a flipped view or a read-only map: copied
    if mode == "ct":
        return _scale_to_unit(volume, *config.ct_window)
    low, high = np.percentile(data, config.percentiles)
    if high <= low:  # a constant volume: the scaling would divide by zero
        return np.zeros_like(data)
    return _scale_to_unit(volume, *(_percentile(volume, q) for q in config.percentiles))


def _scale_to_unit(volume: torch.Tensor, low, high) -> np.ndarray:
    """MONAI's ScaleIntensityRange(low, high, b_min=0, b_max=1, clip=True), op for op (so bit for bit: MONAI
    itself is slow to import, and `samora-kit validate` reads volumes)."""
    b_min, b_max = 0.0, 1.0
    scaled = (volume - low) / (high - low)
    return torch.clamp(scaled * (b_max - b_min) + b_min, b_min, b_max).numpy()


def _percentile(volume: torch.Tensor, q: float) -> torch.Tensor:
    """MONAI's percentile (what ScaleIntensityRangePercentiles takes): torch.quantile in float32, or
    np.percentile for a volume too large for it; a 0-d float32 tensor."""
    if volume.numel() > TORCH_QUANTILE_MAX:
        return torch.as_tensor(np.percentile(volume.numpy(), np.asarray(q)), dtype=volume.dtype)
    return torch.quantile(volume, torch.as_tensor(np.asarray(q) / 100.0, dtype=volume.dtype))
