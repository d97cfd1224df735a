"""Unlabelled pool for stage-1 pre-training: every slice of every image or volume in a folder, images only.

Files are found recursively under `root` (or `root/subdir`), skipping hidden entries and folders whose
name matches `exclude` (label/mask folders by default). A case id is the file's path relative to that
folder without its suffix (`hippocampus_001`, `patient3/t1`), which is what a `selection` lists.

Readers, each giving a Z,H,W stack that is normalised per file with `intensity`:
- NIfTI (.nii, .nii.gz): a 3D volume cut along `slice_axis`;
- .npz / .h5 (.hdf5): array `npz_key` / `h5_key`, H,W (one slice) or Z,H,W (every slice along axis 0);
- .png / .jpg (.jpeg): one slice; colour is reduced to its Rec. 601 luminance (as PIL's "L", without
  rounding to 8 bits); 8-bit and 16-bit pictures are divided by 255 / 65535 first, so
  `intensity.mode = "none"` keeps their own scaling;
- .dcm (needs pydicom): a lone .dcm file in its folder is one slice (or one slice per frame); the .dcm
  files sharing a folder are one series, i.e. one volume whose id is the folder, sorted along the slice
  normal (ImagePositionPatient), else by InstanceNumber, else by file name. Rescale slope/intercept are
  applied, MONOCHROME1 is inverted, and the DICOM Modality drives `intensity.mode = "auto"` (CT window).

Construction only lists files; slice counts come from file headers when `slice_dataset` is called, and
volumes are read and normalised on first use and kept in an LRU cache of `cache_mb`.
"""

from __future__ import annotations

import fnmatch
import os
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torch.utils.data import Dataset

from samora_kit.api import (CaseSelection, ComponentConfig, DataError, IntensityConfig, Volume, did_you_mean,
                            missing_message, normalise, read_nifti, slice_to_model_input)

from .common import SplitCases, existing_dir

NAME = "unlabelled_pool"
Format = Literal["nii", "nii.gz", "npz", "h5", "png", "jpg", "dcm"]
SUFFIXES: dict[str, tuple[str, ...]] = {"nii.gz": (".nii.gz",), "nii": (".nii",), "npz": (".npz",),
                                        "h5": (".h5", ".hdf5"), "png": (".png",), "jpg": (".jpg", ".jpeg"),
                                        "dcm": (".dcm",)}
DICOM_SERIES = "dcm series"  # a folder of .dcm files read as one volume
FOREGROUND_LEVEL = 0.05      # a pixel counts as foreground above this normalised intensity
LUMINANCE = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # Rec. 601, PIL's RGB -> "L"
EXAMPLE = {"root": "../shared/data/msd_hippocampus", "subdir": "imagesTr",
           "selection": {"split_file": "split.json", "key": "unlabeled_pool"}}


class UnlabelledPoolConfig(ComponentConfig):
    root: Path
    selection: CaseSelection | None = None  # ids are file stems; None: every file found
    subdir: str | None = None               # search root/subdir instead of root, e.g. "imagesTr"
    formats: list[Format] = Field(default_factory=lambda: ["nii", "nii.gz", "npz", "h5", "png", "jpg", "dcm"],
                                  min_length=1)
    exclude: list[str] = Field(default_factory=lambda: ["label*", "mask*"])  # folder-name patterns, any case
    slice_axis: int = Field(default=2, ge=0, le=2)  # NIfTI only: the axis cut into 2D slices
    intensity: IntensityConfig = Field(default_factory=IntensityConfig)  # auto: MR percentiles unless DICOM CT
    npz_key: str = "image"
    h5_key: str = "image"
    min_foreground_fraction: float = Field(default=0.0, ge=0.0, le=1.0)  # of pixels > 0.05 after normalising
    cache_mb: int = Field(default=1024, ge=0)  # normalised volumes kept in memory (per data-loading process)

    @field_validator("formats")
    @classmethod
    def _unique_formats(cls, formats: list[str]) -> list[str]:
        if len(set(formats)) != len(formats):
            raise ValueError(f"formats {formats} repeats a format")
        return formats


@dataclass(frozen=True)
class PoolSource:
    path: Path                    # the file, or the folder of a DICOM series
    format: str                   # a key of SUFFIXES, or DICOM_SERIES
    files: tuple[Path, ...] = ()  # a DICOM series' .dcm files


class UnlabelledPool(SplitCases):
    """Images without labels: split "train" is every selected file, "test" is empty."""

    num_classes = 0

    def __init__(self, config: UnlabelledPoolConfig):
        self.config = config
        self.class_names: list[str] = []
        self.root = existing_dir(config.root, "a folder of unlabelled images or volumes")
        self.search_dir = (existing_dir(self.root / config.subdir, f"the subdir {config.subdir!r} of {self.root}")
                           if config.subdir else self.root)
        self.sources = discover(self.search_dir, config.formats, config.exclude)
        if not self.sources:
            raise DataError(f"{self.search_dir}: no {', '.join(config.formats)} files found (searched recursively, "
                            f"skipping hidden entries and folders matching {config.exclude})")
        ids = list(self.sources)
        selected = config.selection.resolve(ids, self.root) if config.selection is not None else ids
        super().__init__({"train": selected, "test": []})
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_bytes = 0

    def load_case(self, case_id: str) -> Volume:
        source = self._source(case_id)
        image, spacing, modality = read_source(source, self.config)
        return Volume(case_id=case_id, image=normalise(image, self.config.intensity, modality, str(source.path)),
                      label=None, spacing=spacing, source=str(source.path),
                      meta={"format": source.format, "modality": modality or ""})

    def slice_count(self, case_id: str) -> int:
        """Slices of one case, from the file header (no pixel data read)."""
        return count_slices(self._source(case_id), self.config)

    def image(self, case_id: str) -> np.ndarray:
        """The normalised Z,H,W image, through the LRU cache."""
        if case_id in self._cache:
            self._cache.move_to_end(case_id)
            return self._cache[case_id]
        image = self.load_case(case_id).image
        budget = self.config.cache_mb * 2**20
        if image.nbytes <= budget:
            self._cache[case_id] = image
            self._cache_bytes += image.nbytes
            while self._cache_bytes > budget:
                _, evicted = self._cache.popitem(last=False)
                self._cache_bytes -= evicted.nbytes
        return image

    def slice_dataset(self, image_size: int) -> "UnlabelledSlices":
        """One item per slice of every selected case: 3,S,S float32 in [0, 1]."""
        return UnlabelledSlices(self, image_size)

    def _source(self, case_id: str) -> PoolSource:
        if case_id not in self.sources:
            raise DataError(f"{self.search_dir}: no image {case_id!r}{did_you_mean(case_id, self.sources)}")
        return self.sources[case_id]


class UnlabelledSlices(Dataset):
    """Slices of an UnlabelledPool's "train" cases as model inputs; random views are the pretext task's job."""

    def __init__(self, pool: UnlabelledPool, image_size: int):
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.pool = pool
        self.image_size = image_size
        self.epoch = 0
        self.expected = {case: pool.slice_count(case) for case in pool.cases("train")}  # header counts
        threshold = pool.config.min_foreground_fraction
        if threshold > 0:  # reads every volume once
            self.index = [(case, z) for case in self.expected
                          for z, fraction in enumerate(_foreground_fractions(self._image(case)))
                          if fraction >= threshold]
        else:
            self.index = [(case, z) for case, n in self.expected.items() for z in range(n)]
        if not self.index:
            raise DataError(f"{pool.search_dir}: no slice has a foreground fraction >= {threshold} "
                            f"(pixels > {FOREGROUND_LEVEL} after normalising); lower min_foreground_fraction")

    def set_epoch(self, epoch: int) -> None:
        """Kept for the training loop; the items themselves do not depend on the epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> torch.Tensor:
        case, z = self.index[i]
        return slice_to_model_input(self._image(case)[z], self.image_size)  # 3, S, S

    def _image(self, case: str) -> np.ndarray:
        image = self.pool.image(case)
        if image.shape[0] != self.expected[case]:
            raise DataError(f"{self.pool.sources[case].path}: its header promises {self.expected[case]} slices "
                            f"but {image.shape[0]} were read")
        return image


def build_unlabelled_pool(config: UnlabelledPoolConfig) -> UnlabelledPool:
    """Every slice of every image/volume in a folder (NIfTI, npz, h5, png/jpg, DICOM), no labels."""
    return UnlabelledPool(config)


# ---- discovery ----------------------------------------------------------------------------------

def discover(search_dir: Path, formats: list[str], exclude: list[str]) -> dict[str, PoolSource]:
    """Case id -> source for every matching file under search_dir, in sorted path order."""
    found: dict[str, PoolSource] = {}
    dicom_dirs: dict[Path, list[Path]] = {}
    for dirpath, dirnames, filenames in os.walk(search_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not _excluded(d, exclude))
        for name in sorted(filenames):
            fmt = _format_of(name, formats)
            if fmt is None or name.startswith("."):  # "._x.nii.gz": macOS metadata, not an image
                continue
            path = Path(dirpath) / name
            if fmt == "dcm":
                dicom_dirs.setdefault(Path(dirpath), []).append(path)
            else:
                _add(found, _case_id(path, search_dir, fmt), PoolSource(path, fmt))
    for folder, files in dicom_dirs.items():
        if len(files) == 1:
            _add(found, _case_id(files[0], search_dir, "dcm"), PoolSource(files[0], "dcm"))
        else:
            case = folder.relative_to(search_dir).as_posix() if folder != search_dir else search_dir.name
            _add(found, case, PoolSource(folder, DICOM_SERIES, tuple(files)))
    return found


def _format_of(name: str, formats: list[str]) -> str | None:
    lower = name.lower()
    return next((fmt for fmt in formats if lower.endswith(SUFFIXES[fmt])), None)


def _case_id(path: Path, search_dir: Path, fmt: str) -> str:
    relative = path.relative_to(search_dir).as_posix()
    suffix = next(s for s in SUFFIXES[fmt] if relative.lower().endswith(s))
    return relative[: -len(suffix)]


def _excluded(folder: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(folder.lower(), pattern.lower()) for pattern in patterns)


def _add(found: dict[str, PoolSource], case: str, source: PoolSource) -> None:
    if case in found:
        raise DataError(f"{source.path} and {found[case].path} both give the case id {case!r}; "
                        "remove one or narrow `formats`")
    found[case] = source


# ---- headers: slice counts without reading pixels ----------------------------------------------

def count_slices(source: PoolSource, config: UnlabelledPoolConfig) -> int:
    path, fmt = source.path, source.format
    if fmt in ("nii", "nii.gz"):
        import nibabel as nib  # slow imports (nibabel, h5py): only for the files a pool holds
        from nibabel.filebasedimages import ImageFileError

        try:
            shape = nib.load(str(path)).shape
        except (ImageFileError, OSError, EOFError, ValueError, zlib.error) as exc:
            raise DataError(f"{path}: unreadable NIfTI file ({type(exc).__name__}: {exc})") from None
        while len(shape) > 3 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) != 3:
            raise DataError(f"{path}: expected a 3D image, got shape {shape}")
        return int(shape[config.slice_axis])
    if fmt == "npz":
        return _stack_depth(_npz_shape(path, config.npz_key), path, config.npz_key)
    if fmt == "h5":
        return _stack_depth(_h5_shape(path, config.h5_key), path, config.h5_key)
    if fmt in ("png", "jpg"):
        _open_picture(path).close()  # reads the header: catches a file that is not a picture now
        return 1
    if fmt == "dcm":
        return int(_dicom_frames(_read_dicom(path, pixels=False)))
    return len(source.files)  # a series: one slice per file (checked when read)


def _stack_depth(shape: tuple[int, ...], path: Path, key: str) -> int:
    if len(shape) == 2:
        return 1
    if len(shape) == 3:
        return int(shape[0])
    raise DataError(f"{path}: array {key!r} has shape {shape}; expected H,W (one slice) or Z,H,W (slices first)")


def _npz_shape(path: Path, key: str) -> tuple[int, ...]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy")]
            if key not in names:
                raise DataError(f"{path}: no array {key!r}; found {names} (set npz_key)")
            with archive.open(f"{key}.npy") as member:
                version = np.lib.format.read_magic(member)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _, _ = read(member)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path}: unreadable or truncated .npz file ({type(exc).__name__}: {exc})") from None
    return tuple(shape)


def _h5_shape(path: Path, key: str) -> tuple[int, ...]:
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            if key not in h5:
                raise DataError(f"{path}: no dataset {key!r}; found {list(h5.keys())} (set h5_key)")
            return tuple(h5[key].shape)
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path}: unreadable or truncated HDF5 file ({type(exc).__name__}: {exc})") from None


# ---- readers: raw Z,H,W float32, spacing (Z, H, W), modality --------------------------------------

def read_source(source: PoolSource, config: UnlabelledPoolConfig
                ) -> tuple[np.ndarray, tuple[float, float, float], str | None]:
    path, fmt = source.path, source.format
    if fmt in ("nii", "nii.gz"):
        image, spacing, _ = read_nifti(path, config.slice_axis)
        return image.astype(np.float32, copy=False), spacing, None
    if fmt == "npz":
        _npz_shape(path, config.npz_key)  # a clear error for a missing key or a broken archive
        try:
            with np.load(path) as npz:
                image = np.asarray(npz[config.npz_key], dtype=np.float32)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise DataError(f"{path}: unreadable or truncated .npz file ({type(exc).__name__}: {exc})") from None
        return _as_stack(image, path, config.npz_key), (1.0, 1.0, 1.0), None
    if fmt == "h5":
        import h5py

        _h5_shape(path, config.h5_key)
        try:
            with h5py.File(path, "r") as h5:
                image = np.asarray(h5[config.h5_key][()], dtype=np.float32)
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(f"{path}: unreadable or truncated HDF5 file ({type(exc).__name__}: {exc})") from None
        return _as_stack(image, path, config.h5_key), (1.0, 1.0, 1.0), None
    if fmt in ("png", "jpg"):
        return _read_picture(path)[None], (1.0, 1.0, 1.0), None
    if fmt == "dcm":
        return _dicom_file(path)
    return _dicom_series(source)


def _as_stack(image: np.ndarray, path: Path, key: str) -> np.ndarray:
    _stack_depth(image.shape, path, key)
    return image[None] if image.ndim == 2 else image


def _open_picture(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: unreadable image file ({type(exc).__name__}: {exc})") from None


def _read_picture(path: Path) -> np.ndarray:
    """H,W float32: grey as stored, colour as luminance; 8/16-bit scaled to [0, 1]."""
    with _open_picture(path) as picture:
        try:
            picture.load()
            mode = picture.mode
            if mode.startswith("I;16"):
                return np.asarray(picture).astype(np.float32) / 65535.0
            if mode in ("I", "F"):
                return np.asarray(picture, dtype=np.float32)
            if mode == "L":
                return np.asarray(picture, dtype=np.float32) / 255.0
            rgb = np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0  # H, W, 3
        except (OSError, ValueError, SyntaxError) as exc:
            raise DataError(f"{path}: unreadable or truncated image file ({type(exc).__name__}: {exc})") from None
    return rgb @ LUMINANCE


def _pydicom(path: Path):
    try:
        import pydicom
    except ImportError:
        raise DataError(f"{path}: {missing_message('pydicom', 'reading DICOM')}; or leave 'dcm' out of formats") from None
    return pydicom


def _read_dicom(path: Path, pixels: bool = True):
    pydicom = _pydicom(path)
    try:
        dataset = pydicom.dcmread(str(path), stop_before_pixels=not pixels)
        if pixels and "PixelData" not in dataset:
            raise DataError(f"{path}: DICOM file holds no pixel data")
        return dataset
    except DataError:
        raise
    except Exception as exc:  # pydicom raises many types for a broken file
        raise DataError(f"{path}: unreadable DICOM file ({type(exc).__name__}: {exc})") from None


def _dicom_frames(dataset) -> int:
    return int(dataset.get("NumberOfFrames", 1) or 1)


def _dicom_pixels(dataset, path: Path) -> np.ndarray:
    """F,H,W float32 after the modality LUT (rescale slope/intercept); MONOCHROME1 inverted; colour to luminance."""
    pydicom = _pydicom(path)
    try:
        from pydicom.pixels import apply_modality_lut  # pydicom >= 3
    except ImportError:
        from pydicom.pixel_data_handlers.util import apply_modality_lut  # pydicom 2.x
    try:
        pixels = np.asarray(apply_modality_lut(dataset.pixel_array, dataset), dtype=np.float32)
    except Exception as exc:  # e.g. a compressed transfer syntax without its decoder installed
        raise DataError(f"{path}: cannot decode the DICOM pixel data with pydicom {pydicom.__version__} "
                        f"({type(exc).__name__}: {exc})") from None
    if int(dataset.get("SamplesPerPixel", 1)) > 1:
        pixels = pixels[..., :3] @ LUMINANCE
    if _dicom_frames(dataset) == 1:
        pixels = pixels[None]
    if str(dataset.get("PhotometricInterpretation", "")) == "MONOCHROME1":  # low values display white
        pixels = pixels.max() + pixels.min() - pixels
    return pixels


def _dicom_spacing(dataset, slice_spacing: float | None = None) -> tuple[float, float, float]:
    row, col = (float(v) for v in dataset.get("PixelSpacing", [1.0, 1.0]))
    dz = slice_spacing or float(dataset.get("SpacingBetweenSlices", 0) or dataset.get("SliceThickness", 0) or 1.0)
    return (dz, row, col)


def _dicom_file(path: Path) -> tuple[np.ndarray, tuple[float, float, float], str | None]:
    dataset = _read_dicom(path)
    return _dicom_pixels(dataset, path), _dicom_spacing(dataset), str(dataset.get("Modality", "")) or None


def _dicom_series(source: PoolSource) -> tuple[np.ndarray, tuple[float, float, float], str | None]:
    folder = source.path
    datasets = [(path, _read_dicom(path)) for path in source.files]
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in datasets} - {""}
    if len(series) > 1:
        raise DataError(f"{folder}: holds .dcm files of {len(series)} series; the .dcm files sharing a folder "
                        "are read as one series (one volume), so put each series in its own folder")
    positions = _slice_positions([ds for _, ds in datasets])
    if positions is not None:
        order = sorted(range(len(datasets)), key=lambda i: positions[i])
    elif all("InstanceNumber" in ds for _, ds in datasets):
        order = sorted(range(len(datasets)), key=lambda i: int(datasets[i][1].InstanceNumber))
    else:
        order = list(range(len(datasets)))  # file-name order
    slices = []
    for i in order:
        path, dataset = datasets[i]
        pixels = _dicom_pixels(dataset, path)
        if pixels.shape[0] != 1:
            raise DataError(f"{path}: a multi-frame file ({pixels.shape[0]} frames) inside the series folder "
                            f"{folder}; give it a folder of its own")
        if slices and pixels.shape[1:] != slices[0].shape:
            raise DataError(f"{path}: slice of shape {pixels.shape[1:]} in a series of {slices[0].shape} slices")
        slices.append(pixels[0])
    gaps = np.diff(sorted(positions)) if positions is not None and len(positions) > 1 else None
    spacing = _dicom_spacing(datasets[order[0]][1], float(np.median(gaps)) if gaps is not None else None)
    return np.stack(slices), spacing, str(datasets[0][1].get("Modality", "")) or None


def _slice_positions(datasets) -> list[float] | None:
    """Each slice's position along the series' slice normal, or None when any header lacks the geometry."""
    if not all("ImagePositionPatient" in ds and "ImageOrientationPatient" in ds for ds in datasets):
        return None
    orientation = np.asarray(datasets[0].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(orientation[:3], orientation[3:])
    return [float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=np.float64), normal)) for ds in datasets]


def _foreground_fractions(image: np.ndarray) -> np.ndarray:
    return (image > FOREGROUND_LEVEL).reshape(image.shape[0], -1).mean(axis=1)  # one per slice
