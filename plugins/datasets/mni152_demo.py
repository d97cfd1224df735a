"""Quick-start data that needs no download: the MNI152 2009a template shipped inside the nilearn wheel.

This is ONE subject-free template brain (a T1 average with grey/white-matter probability maps) cut
into axial slabs; each slab is a "case". Train and test slabs come from the same brain, so scores on
it are a smoke test that the pipeline runs end to end, not a benchmark.

Labels: 0 background, 1 grey matter, 2 white matter (the more probable tissue where its
probability is >= 0.5). The template is block-averaged by `downsample` in-plane (and
`slice_downsample` through-plane), then cut into contiguous slabs of `slab_slices` axial slices;
only slabs with at least MIN_BRAIN_FRACTION tissue are kept. By default two central slabs are the
training cases and the four nearest slabs not adjacent to them are the test cases.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from pydantic import Field

from samora_kit.api import (CaseSelection, ComponentConfig, DataError, IntensityConfig, Volume, did_you_mean,
                            missing_message, normalise, read_nifti, slice_to_model_input)

from .common import SplitCases, check_num_classes

NAME = "mni152_demo"
CLASS_NAMES = ["grey matter", "white matter"]
FILES = {tissue: f"mni_icbm152_{tissue}_tal_nlin_sym_09a_converted.nii.gz" for tissue in ("t1", "gm", "wm")}
MIN_BRAIN_FRACTION = 0.05  # of a slab's voxels; drops the slabs that only graze the top or bottom of the brain
TRAIN_SLABS, TEST_SLABS = 2, 4
AXIAL = 2  # the template's third voxel axis runs inferior -> superior


class Mni152DemoConfig(ComponentConfig):
    root: Path | None = None  # folder holding the three template files; None: the copy inside nilearn
    train: CaseSelection | None = None  # None: the two central slabs
    test: CaseSelection | None = None   # None: the four nearest slabs not adjacent to the training ones
    intensity: IntensityConfig = Field(default_factory=IntensityConfig)
    num_classes: int | None = Field(default=None, ge=1)
    slab_slices: int = Field(default=12, ge=1)
    downsample: int = Field(default=2, ge=1)        # in-plane block-average factor
    slice_downsample: int = Field(default=1, ge=1)  # through-plane factor; 1 keeps 1 mm slices


class Mni152Demo(SplitCases):
    """Axial slabs of the MNI152 template; case ids are `slabNN`, counted from the bottom."""

    def __init__(self, config: Mni152DemoConfig):
        self.config = config
        self.root = config.root or nilearn_data_dir()
        self.num_classes = check_num_classes(config.num_classes, len(CLASS_NAMES), str(self.root))
        self.class_names = list(CLASS_NAMES)
        self.label, self.spacing = self._load_labels()  # Z, H, W
        self._image: np.ndarray | None = None  # read on first use: listing the cases (validate) needs only the labels
        self.slabs = self._slabs_with_brain()  # slab id -> first slice
        ids = list(self.slabs)
        defaults = default_split(ids, str(self.root)) if config.train is None or config.test is None else ([], [])
        super().__init__({"train": (config.train or CaseSelection(cases=defaults[0])).resolve(ids, self.root),
                          "test": (config.test or CaseSelection(cases=defaults[1])).resolve(ids, self.root)})

    def load_case(self, case_id: str) -> Volume:
        if case_id not in self.slabs:
            raise DataError(f"{self.root}: no slab {case_id!r}{did_you_mean(case_id, self.slabs)}; "
                            f"slabs with brain: {', '.join(self.slabs)}")
        start = self.slabs[case_id]
        stop = start + self.config.slab_slices
        return Volume(case_id=case_id, image=self.image[start:stop].copy(), label=self.label[start:stop].copy(),
                      spacing=self.spacing, source=str(self.root / FILES["t1"]),
                      meta={"slices": (start, stop), "template": "MNI152 2009a symmetric, one template brain"})

    def slice_dataset(self, image_size: int) -> "TemplateSlices":
        """Label-free slices of every slab except the test slabs, for stage-1 pre-training."""
        test = set(self.cases("test"))
        return TemplateSlices([self.image[start:start + self.config.slab_slices]
                               for slab, start in self.slabs.items() if slab not in test], image_size)

    @property
    def image(self) -> np.ndarray:
        """The T1 template, Z, H, W in [0, 1]."""
        if self._image is None:
            t1, _ = self._read("t1")
            self._image = normalise(t1, self.config.intensity, "MRI", str(self.root / FILES["t1"]))
        return self._image

    def _read(self, tissue: str) -> tuple[np.ndarray, tuple[float, float, float]]:
        """One template file, block-averaged: (Z, H, W float32, the averaged voxels' spacing)."""
        factors = (self.config.slice_downsample, self.config.downsample, self.config.downsample)
        array, spacing, _ = read_nifti(self.root / FILES[tissue], AXIAL)  # Z, H, W
        scale = 255.0 if array.dtype == np.uint8 else 1.0  # nilearn stores probabilities as 0..255
        return block_mean(array.astype(np.float32) / scale, factors), tuple(s * f for s, f in zip(spacing, factors))

    def _load_labels(self) -> tuple[np.ndarray, tuple[float, float, float]]:
        (grey, spacing), (white, _) = self._read("gm"), self._read("wm")
        label = np.where(np.maximum(grey, white) >= 0.5, np.where(white > grey, 2, 1), 0).astype(np.int64)
        return label, spacing

    def _slabs_with_brain(self) -> dict[str, int]:
        size = self.config.slab_slices
        return {f"slab{k:02d}": k * size for k in range(self.label.shape[0] // size)
                if (self.label[k * size:(k + 1) * size] > 0).mean() >= MIN_BRAIN_FRACTION}


class TemplateSlices(Dataset):
    """Images only (3,S,S in [0, 1]), one per slice of the given Z,H,W blocks."""

    def __init__(self, blocks: list[np.ndarray], image_size: int):
        self.slices = [z_slice for block in blocks for z_slice in block]
        self.image_size = image_size

    def set_epoch(self, epoch: int) -> None:  # items do not depend on the epoch
        pass

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, i: int) -> torch.Tensor:
        return slice_to_model_input(self.slices[i], self.image_size)


def build_mni152_demo(config: Mni152DemoConfig) -> Mni152Demo:
    """MNI152 template from the nilearn wheel, cut into slabs: a no-download smoke test (GM, WM)."""
    return Mni152Demo(config)


def default_split(slab_ids: list[str], where: str = "") -> tuple[list[str], list[str]]:
    """Two central slabs for training; the four nearest slabs not touching them for testing."""
    index = {slab: int(slab[len("slab"):]) for slab in slab_ids}
    middle = len(slab_ids) // 2
    train = slab_ids[max(middle - 1, 0): middle + 1]
    away = [s for s in slab_ids if all(abs(index[s] - index[t]) > 1 for t in train)]
    if len(train) < TRAIN_SLABS or len(away) < TEST_SLABS:
        raise DataError(f"{where}: only {len(slab_ids)} slabs contain brain, too few for {TRAIN_SLABS} training "
                        f"and {TEST_SLABS} non-adjacent test slabs; lower slab_slices or slice_downsample, "
                        "or give train and test")
    centre = sum(index[s] for s in train) / len(train)
    test = sorted(sorted(away, key=lambda s: (abs(index[s] - centre), index[s]))[:TEST_SLABS], key=index.get)
    return train, test


def block_mean(array: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Average non-overlapping blocks (trailing voxels that do not fill a block are dropped)."""
    if all(f == 1 for f in factors):
        return array
    kept = [n // f * f for n, f in zip(array.shape, factors)]
    cropped = array[: kept[0], : kept[1], : kept[2]]
    blocks = cropped.reshape(kept[0] // factors[0], factors[0], kept[1] // factors[1], factors[1],
                             kept[2] // factors[2], factors[2])
    return blocks.mean(axis=(1, 3, 5))


def nilearn_data_dir() -> Path:
    """nilearn/datasets/data, found without importing nilearn (its import takes seconds)."""
    spec = importlib.util.find_spec("nilearn")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DataError(missing_message("nilearn", "the mni152_demo dataset (the MNI152 template shipped inside nilearn)"))
    folder = Path(locations[0]) / "datasets" / "data"
    missing = [name for name in FILES.values() if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{folder}: missing {', '.join(missing)}; reinstall nilearn (pip install nilearn) "
                        "or set root to a folder holding these files")
    return folder
