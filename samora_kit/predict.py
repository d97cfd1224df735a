"""NIfTI in, NIfTI masks out with the input's spacing, origin and direction, plus overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape

from .data.intensity import IntensityConfig, normalise
from .data.nifti import read_nifti, write_nifti_like
from .eval.inference import predict_volume
from .errors import SamoraError
from .interfaces import IntensitySettings, SliceAxis
from .eval.overlay import save_overlay


def predict_files(model, recipe, class_names: list[str], inputs: list[Path], out_dir: Path,
                  overlays: bool = True, device: torch.device = torch.device("cpu"),
                  console: Console | None = None, batch_size: int | None = None,
                  precision: torch.dtype | None = None) -> list[Path]:
    """Masks (and overlays) of `inputs` in `out_dir`; slices in batches of `batch_size` (default the recipe's
    eval.batch_size) on `device` (the model's), under autocast to `precision` (None: fp32)."""
    console = console or Console()
    intensity = recipe.data.intensity if isinstance(recipe.data, IntensitySettings) else IntensityConfig()
    slice_axis = recipe.data.slice_axis if isinstance(recipe.data, SliceAxis) else 2
    check_output_names(inputs, out_dir)
    written = []
    for path in inputs:
        stem = output_stem(path)
        array, _, image = read_nifti(path, slice_axis)
        volume = normalise(array.astype(np.float32), intensity, None)
        labels = predict_volume(model, volume, batch_size or recipe.eval.batch_size, device, precision)
        target = out_dir / f"{stem}.nii.gz"
        write_nifti_like(image, labels.astype(np.uint8), slice_axis, target)
        if overlays:
            save_overlay(volume, labels, out_dir / "overlays" / f"{stem}.png", class_names, title=stem)
        console.print(f"{escape(str(path))} -> {escape(str(target))}")
        written.append(target)
    return written


def output_stem(path: Path) -> str:
    """scan.nii.gz -> scan: the name of the mask written for `path`."""
    return path.name.removesuffix(".gz").removesuffix(".nii")


def check_output_names(inputs: list[Path], out_dir: Path) -> None:
    """Refuse inputs whose masks would overwrite each other (same file name from different folders)."""
    stems = [output_stem(path) for path in inputs]
    clashes = sorted({stem for stem in stems if stems.count(stem) > 1})
    if clashes:
        same = [str(p) for p, stem in zip(inputs, stems) if stem == clashes[0]]
        raise SamoraError(f"{', '.join(same)} would all be written to {out_dir / (clashes[0] + '.nii.gz')}; "
                          "predict them into separate --output folders")
