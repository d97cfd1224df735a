"""NIfTI in, NIfTI masks out with the input's spacing, origin and direction, plus overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from .data.intensity import IntensityConfig, normalise
from .data.nifti import read_nifti, write_nifti_like
from .eval.inference import predict_volume
from .eval.overlay import save_overlay


def predict_files(model, recipe, class_names: list[str], inputs: list[Path], out_dir: Path,
                  overlays: bool = True, device: torch.device = torch.device("cpu"),
                  console: Console | None = None) -> list[Path]:
    console = console or Console()
    intensity = getattr(recipe.data, "intensity", None) or IntensityConfig()
    slice_axis = getattr(recipe.data, "slice_axis", 2)
    written = []
    for path in inputs:
        array, _, image = read_nifti(path, slice_axis)
        volume = normalise(array.astype(np.float32), intensity, None)
        labels = predict_volume(model, volume, recipe.eval.batch_size, device)
        stem = path.name.removesuffix(".gz").removesuffix(".nii")
        target = out_dir / f"{stem}.nii.gz"
        write_nifti_like(image, labels.astype(np.uint8), slice_axis, target)
        if overlays:
            save_overlay(volume, labels, out_dir / "overlays" / f"{stem}.png", class_names, title=stem)
        console.print(f"{path} -> {target}")
        written.append(target)
    return written
