"""Slice-wise prediction of a whole volume, stacked back to the volume's grid."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.slices import slice_to_model_input


@torch.no_grad()
def predict_volume(model, image: np.ndarray, batch_size: int = 16,
                   device: torch.device = torch.device("cpu")) -> np.ndarray:
    """image: Z,H,W in [0, 1] -> labels Z,H,W (int64)."""
    model.eval()
    out = np.zeros(image.shape, dtype=np.int64)
    for start in range(0, image.shape[0], batch_size):
        chunk = image[start:start + batch_size]
        x = torch.stack([slice_to_model_input(s, model.image_size) for s in chunk]).to(device)
        labels = model.predict(x).float()[:, None]  # B, 1, S, S
        labels = F.interpolate(labels, size=image.shape[1:], mode="nearest-exact")
        out[start:start + len(chunk)] = labels[:, 0].long().cpu().numpy()
    return out
