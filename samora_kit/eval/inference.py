"""Slice-wise prediction of a whole volume, stacked back to the volume's grid."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.slices import slice_to_model_input
from ..devices import autocast, to_device


@torch.no_grad()
def predict_volume(model, image: np.ndarray, batch_size: int = 16,
                   device: torch.device | str = torch.device("cpu"),
                   precision: torch.dtype | None = None) -> np.ndarray:
    """image: Z,H,W in [0, 1] -> labels Z,H,W (int64), in the volume's slice order: batches of
    `batch_size` slices on `device` (the model's), under autocast to `precision` (None: fp32)."""
    device = torch.device(device)
    model.eval()
    out = np.zeros(image.shape, dtype=np.int64)
    for start in range(0, image.shape[0], batch_size):
        chunk = image[start:start + batch_size]
        x = to_device(torch.stack([slice_to_model_input(s, model.image_size) for s in chunk]), device)  # B, 3, S, S
        with autocast(device, precision):
            labels = model.predict(x)  # B, S, S
        labels = F.interpolate(labels.float()[:, None], size=image.shape[1:], mode="nearest-exact")
        out[start:start + len(chunk)] = labels[:, 0].long().cpu().numpy()
    return out
