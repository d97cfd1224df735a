"""Read NIfTI volumes slices-first and write predictions back in the reference's space."""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DataError
from ..weights.io import atomic_write

if TYPE_CHECKING:  # nibabel is slow to import: only where a file is read or written
    import nibabel as nib

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def read_nifti(path: str | Path, slice_axis: int = 2) -> tuple[np.ndarray, tuple[float, float, float], nib.Nifti1Image]:
    """Return (array Z,H,W with slice_axis moved first, spacing in (Z, H, W) order, the nibabel image).

    Floating data come back as float32; integer data keep their integer dtype."""
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    path = Path(path)
    _check_axis(slice_axis, path)
    if not path.is_file():
        raise DataError(f"{path}: no such NIfTI file")
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)  # the lazy proxy reads (and decompresses) here
    except (ImageFileError, OSError, EOFError, ValueError, zlib.error) as exc:
        raise DataError(f"{path}: unreadable or truncated NIfTI file, expected a 3D .nii/.nii.gz image "
                        f"({type(exc).__name__}: {exc})") from None
    if data.ndim > 3 and all(n == 1 for n in data.shape[3:]):
        data = data.reshape(data.shape[:3])  # X, Y, Z, 1 is still a 3D image
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3D image, got shape {data.shape}"
                        + (" (several channels or time points are not supported)" if data.ndim > 3 else ""))
    if np.issubdtype(data.dtype, np.floating):
        data = data.astype(np.float32, copy=False)
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    return np.ascontiguousarray(np.moveaxis(data, slice_axis, 0)), _slices_first(zooms, slice_axis), image


def check_same_geometry(image: nib.Nifti1Image, label: nib.Nifti1Image, image_path: str | Path,
                        label_path: str | Path) -> None:
    """A label must lie on its image's grid (as nnU-Net checks): the same affine (spacing, origin,
    direction) within 1e-3 mm; DataError naming both files and both geometries otherwise."""
    a, b = np.asarray(image.affine, float), np.asarray(label.affine, float)
    if not np.allclose(a, b, rtol=1e-4, atol=1e-3):
        def geometry(affine: np.ndarray) -> str:
            spacing = np.linalg.norm(affine[:3, :3], axis=0)
            return f"spacing {tuple(round(float(x), 4) for x in spacing)}, origin {tuple(round(float(x), 3) for x in affine[:3, 3])}"
        raise DataError(f"{label_path}: the label's geometry ({geometry(b)}) differs from its image {image_path} "
                        f"({geometry(a)}); resample the label onto the image's grid")


def write_nifti_like(reference_image: nib.Nifti1Image, array_zhw: np.ndarray, slice_axis: int,
                     path: str | Path) -> Path:
    """Write array_zhw (as read_nifti returned it) with the reference's affine and header, atomically."""
    import nibabel as nib

    path = Path(path)
    _check_axis(slice_axis, path)
    suffix = next((s for s in NIFTI_SUFFIXES if path.name.endswith(s)), None)
    if suffix is None:
        raise DataError(f"{path}: a NIfTI output must end in .nii.gz or .nii")
    data = np.moveaxis(np.asarray(array_zhw), 0, slice_axis)  # back to the reference's X, Y, Z
    expected = tuple(reference_image.shape[:3])
    if data.shape != expected:
        raise DataError(f"{path}: array has shape {data.shape} after moving axis 0 back to {slice_axis}, "
                        f"but the reference image has shape {expected}")
    header = reference_image.header.copy()
    header.set_data_dtype(data.dtype)  # labels stay integers even when the reference image is float
    image = type(reference_image)(data, reference_image.affine, header=header)

    def write(tmp: str) -> None:
        named = f"{tmp}{suffix}"  # nibabel picks the format from the suffix
        try:
            nib.save(image, named)
            os.replace(named, tmp)
        finally:
            Path(named).unlink(missing_ok=True)

    return atomic_write(path, write)


def _slices_first(zooms: tuple[float, float, float], slice_axis: int) -> tuple[float, float, float]:
    rest = [z for axis, z in enumerate(zooms) if axis != slice_axis]
    return (zooms[slice_axis], rest[0], rest[1])


def _check_axis(slice_axis: int, path: Path) -> None:
    if slice_axis not in (0, 1, 2):
        raise DataError(f"{path}: slice_axis must be 0, 1 or 2, got {slice_axis}")
