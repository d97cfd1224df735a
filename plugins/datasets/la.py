"""Left atrium (2018 Atrial Segmentation Challenge) in the UA-MT layout:

    <root>/<case>/mri_norm2.h5    datasets image (float, z-scored per volume) and label (uint8, 0/1), shape H,W,D

Slices are cut along D, so a Volume is D,H,W. UA-MT already z-scored every image; the adapter maps it to
[0, 1] with per-volume percentile normalisation (intensity mode "mr").

Default splits follow H-SAM's 4-scan LA setting: train = the first 4 ids of UA-MT's `train.list`
(shipped as lists/la_train.list, 80 ids), test = UA-MT's `test.list` (lists/la_test.list, 20 ids).
Any other labelled subset: `train = {list_file = "<...>/la_train.list", count = 8, seed = 1}` or explicit cases.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field

from samora_kit.api import CaseSelection, DataError, IntensityConfig, Volume, did_you_mean, normalise

from .common import DatasetConfig, SplitCases, check_num_classes, checked_label, existing_dir, h5_datasets

NAME = "la"
CLASS_NAMES = ["left atrium"]
CASE_FILE = "mri_norm2.h5"
LISTS_DIR = Path(__file__).resolve().parent / "lists"
TRAIN_LIST = LISTS_DIR / "la_train.list"   # UA-MT data/train.list, 80 ids
TEST_LIST = LISTS_DIR / "la_test.list"     # UA-MT data/test.list, 20 ids
DEFAULT_LABELLED = 4                       # H-SAM: the first 4 cases of train.list
EXAMPLE = {"root": "data/LA"}


class LaConfig(DatasetConfig):
    train: CaseSelection | None = None  # None: the first 4 ids of the shipped la_train.list (H-SAM's 4 scans)
    test: CaseSelection | None = None   # None: the 20 ids of the shipped la_test.list
    intensity: IntensityConfig = Field(default_factory=lambda: IntensityConfig(mode="mr"))  # z-scored -> [0, 1]
    # mri_norm2.h5 stores no spacing. The challenge scans are 0.625 mm isotropic; set this to report
    # distances in mm. None: (1, 1, 1) placeholder, so HD95 is in voxels (as H-SAM's medpy protocol).
    voxel_size_mm: float | None = Field(default=None, gt=0)


def read_list(path: Path) -> list[str]:
    """Ids of a list file: one per line, blank lines and '#' comments ignored."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def default_train() -> CaseSelection:
    return CaseSelection(cases=read_list(TRAIN_LIST)[:DEFAULT_LABELLED])


def default_test() -> CaseSelection:
    return CaseSelection(list_file=TEST_LIST)


class LaDataset(SplitCases):
    """UA-MT left-atrium volumes; case ids are the challenge's 20-character folder names."""

    def __init__(self, config: LaConfig):
        self.config = config
        self.root = existing_dir(config.root, f"a folder of <case>/{CASE_FILE} (UA-MT's '2018LA_Seg_Training Set')")
        self.num_classes = check_num_classes(config.num_classes, len(CLASS_NAMES), str(self.root))
        self.class_names = list(CLASS_NAMES)
        self.files = case_files(self.root)
        train = config.train or default_train()
        test = config.test or default_test()
        super().__init__({"train": train.resolve(self.files, self.root),
                          "test": test.resolve(self.files, self.root)})

    def load_case(self, case_id: str) -> Volume:
        if case_id not in self.files:
            raise DataError(f"{self.root}: no case {case_id!r}{did_you_mean(case_id, self.files)}")
        path = self.files[case_id]
        image, label = read_la_h5(path)  # D, H, W each
        size = self.config.voxel_size_mm
        meta = {"spacing_known": size is not None, "slice_axis": "D (the h5's last axis)"}
        if size is None:
            meta["spacing_note"] = ("mri_norm2.h5 stores no voxel spacing; (1, 1, 1) is a placeholder, so "
                                    "distances (HD95) are in voxels. Set voxel_size_mm = 0.625 for mm")
        return Volume(case_id=case_id,
                      image=normalise(image, self.config.intensity, "MRI", str(path)),
                      label=checked_label(label, self.num_classes, str(path)),
                      spacing=(size, size, size) if size is not None else (1.0, 1.0, 1.0),
                      source=str(path), meta=meta)


def build_la(config: LaConfig) -> LaDataset:
    """Left atrium MRI (2018 LA challenge), UA-MT mri_norm2.h5 layout (1 class)."""
    return LaDataset(config)


def case_files(root: Path) -> dict[str, Path]:
    """case id -> <root>/<case>/mri_norm2.h5 for every case folder holding that file."""
    files = {p.parent.name: p for p in sorted(root.glob(f"*/{CASE_FILE}")) if p.is_file()}
    if not files:
        raise DataError(f"{root}: no <case>/{CASE_FILE} files; expected UA-MT's LA layout "
                        f"(one folder per case, each holding {CASE_FILE})")
    return files


def check_la_h5(path: Path) -> tuple[int, int, int]:
    """The H,W,D shape of a UA-MT file after checking its datasets, without reading the voxels."""
    image, label = h5_datasets(_existing_case_file(path), take=lambda d: tuple(d.shape))
    return _checked_shape(path, image, label)


def read_la_h5(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, label) as D,H,W from a UA-MT H,W,D file."""
    image, label = h5_datasets(_existing_case_file(path))
    image, label = np.asarray(image, dtype=np.float32), np.asarray(label)
    _checked_shape(path, image.shape, label.shape)
    return np.ascontiguousarray(np.moveaxis(image, 2, 0)), np.ascontiguousarray(np.moveaxis(label, 2, 0))


def _existing_case_file(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: no such file; every LA case folder needs {CASE_FILE}")
    return path


def _checked_shape(path: Path, image: tuple[int, ...], label: tuple[int, ...]) -> tuple[int, int, int]:
    if len(image) != 3:
        raise DataError(f"{path}: expected a 3D H,W,D 'image', got shape {image}")
    if image != label:
        raise DataError(f"{path}: 'image' has shape {image} but 'label' has {label}; "
                        "they must match voxel for voxel")
    return image
