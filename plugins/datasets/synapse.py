"""Synapse multi-organ CT in the TransUNet/SAMed layout, already windowed to [0, 1]:

    train_npz/<case>_slice<NNN>.npz   keys image, label: one H,W slice each (train ids are slice names)
    test_vol_h5/<case>.npy.h5         datasets image, label: D,H,W (test ids are case names)
    <list_dir>/train.txt, test_vol.txt  the default selections (train_220.txt-style lists give the 10 % setting)
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from pydantic import Field

from samora_kit.api import CaseSelection, DataError, IntensityConfig, Volume, did_you_mean, normalise

from .common import (DatasetConfig, SplitCases, check_num_classes, check_same_shape, checked_label,
                     existing_dir, read_h5_pair)

NAME = "synapse"
CLASS_NAMES = ["spleen", "right kidney", "left kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas"]
TEST_SUFFIX = ".npy.h5"
EXAMPLE = {"root": "data/Synapse", "list_dir": "lists/lists_Synapse"}


class SynapseConfig(DatasetConfig):
    list_dir: str = "lists/lists_Synapse"  # relative to root unless absolute
    train: CaseSelection | None = None     # None: every slice in <list_dir>/train.txt
    test: CaseSelection | None = None      # None: every case in <list_dir>/test_vol.txt
    intensity: IntensityConfig = Field(default_factory=lambda: IntensityConfig(mode="none"))  # stored in [0, 1]


class SynapseDataset(SplitCases):
    """TransUNet Synapse: train items are single slices (Z = 1), test items are whole volumes."""

    def __init__(self, config: SynapseConfig):
        self.config = config
        self.root = existing_dir(config.root, "the Synapse folder with train_npz/ and test_vol_h5/")
        self.num_classes = check_num_classes(config.num_classes, len(CLASS_NAMES), str(self.root))
        self.class_names = list(CLASS_NAMES)
        train_dir = existing_dir(self.root / "train_npz", "<case>_slice<NNN>.npz files")
        test_dir = existing_dir(self.root / "test_vol_h5", "<case>.npy.h5 files")
        self.train_files = {p.stem: p for p in sorted(train_dir.glob("*.npz"))}
        self.test_files = {p.name[: -len(TEST_SUFFIX)]: p for p in sorted(test_dir.glob(f"*{TEST_SUFFIX}"))}
        list_dir = Path(config.list_dir)
        train = config.train or CaseSelection(list_file=list_dir / "train.txt")
        test = config.test or CaseSelection(list_file=list_dir / "test_vol.txt")
        super().__init__({"train": train.resolve(self.train_files, self.root),
                          "test": test.resolve(self.test_files, self.root)})

    def load_case(self, case_id: str) -> Volume:
        if case_id in self.train_files:
            path = self.train_files[case_id]
            image, label = _read_npz(path)
            image, label = image[None], label[None]  # 1, H, W: a one-slice volume
        elif case_id in self.test_files:
            path = self.test_files[case_id]
            image, label = read_h5_pair(path)            # D, H, W
        else:
            raise DataError(f"{self.root}: no slice or case {case_id!r}"
                            f"{did_you_mean(case_id, [*self.train_files, *self.test_files])}")
        check_same_shape(image, label, f"{path}:image", f"{path}:label")
        return Volume(case_id=case_id,
                      image=normalise(image, self.config.intensity, "CT", str(path)),
                      label=checked_label(label, self.num_classes, str(path)),
                      spacing=(1.0, 1.0, 1.0), source=str(path),
                      meta={"spacing_known": False,
                            "spacing_note": "TransUNet Synapse files store no voxel spacing; (1, 1, 1) is a "
                                            "placeholder, so distances (HD95) are in voxels"})


def build_synapse(config: SynapseConfig) -> SynapseDataset:
    """Synapse multi-organ CT, TransUNet/SAMed npz + h5 layout (8 organs)."""
    return SynapseDataset(config)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path) as npz:
            missing = [key for key in ("image", "label") if key not in npz.files]
            if missing:
                raise DataError(f"{path}: missing array(s) {missing}; found {npz.files}, expected 'image' and 'label'")
            image, label = np.asarray(npz["image"], dtype=np.float32), np.asarray(npz["label"])
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: unreadable or truncated .npz file ({exc})") from None
    if image.ndim != 2:
        raise DataError(f"{path}: expected one H,W slice in 'image', got shape {image.shape}")
    return image, label

