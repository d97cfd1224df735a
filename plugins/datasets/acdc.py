"""ACDC cardiac cine-MRI in the SSL4MIS HDF5 layout: <patient>_frame01.h5 (ED) and _frame02.h5 (ES).

Selections name patients; each patient expands to all of its frames, so both frames stay on one side."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field

from samora_kit.api import DataError, IntensityConfig, Volume, did_you_mean, normalise

from .common import (DatasetConfig, SplitCases, check_num_classes, check_same_shape, checked_label,
                     existing_dir, read_h5_pair)

NAME = "acdc"
CLASS_NAMES = ["RV", "Myo", "LV"]
FRAME_FILE = re.compile(r"^(?P<patient>.+)_(?P<frame>frame\d+)\.h5$")
EXAMPLE = {"root": "../shared/data/acdc",
           "train": {"split_file": "split.json", "key": "support_sets.k1.0"},
           "test": {"split_file": "split.json", "key": "test"}}


class AcdcConfig(DatasetConfig):
    volumes_dir: str = "volumes"  # relative to root
    intensity: IntensityConfig = Field(default_factory=lambda: IntensityConfig(mode="none"))  # stored in [0, 1]


class AcdcDataset(SplitCases):
    """SSL4MIS ACDC volumes; case ids are `<patient>_frameNN`. No voxel spacing is stored."""

    def __init__(self, config: AcdcConfig):
        self.config = config
        self.root = existing_dir(config.root, "the ACDC data folder")
        self.volumes_dir = existing_dir(self.root / config.volumes_dir, "<patient>_frame01.h5 files")
        self.num_classes = check_num_classes(config.num_classes, len(CLASS_NAMES), str(self.root))
        self.class_names = list(CLASS_NAMES)
        self.frames = _frames_by_patient(self.volumes_dir)  # patient -> sorted case ids
        self.files = {case: self.volumes_dir / f"{case}.h5" for cases in self.frames.values() for case in cases}
        patients = sorted(self.frames)
        super().__init__({split: [case for patient in selection.resolve(patients, self.root)
                                  for case in self.frames[patient]]
                          for split, selection in (("train", config.train), ("test", config.test))})

    def load_case(self, case_id: str) -> Volume:
        if case_id not in self.files:
            raise DataError(f"{self.volumes_dir}: no case {case_id!r}{did_you_mean(case_id, self.files)}")
        path = self.files[case_id]
        image, label = read_h5_pair(path)  # Z, H, W each
        check_same_shape(image, label, f"{path}:image", f"{path}:label")
        return Volume(case_id=case_id,
                      image=normalise(image, self.config.intensity, "MRI", str(path)),
                      label=checked_label(label, self.num_classes, str(path)),
                      spacing=(1.0, 1.0, 1.0), source=str(path),
                      meta={"spacing_known": False,
                            "spacing_note": "ACDC HDF5 stores no voxel spacing; (1, 1, 1) is a placeholder, "
                                            "so distances (HD95) are in voxels",
                            "patient": FRAME_FILE.match(path.name)["patient"]})


def build_acdc(config: AcdcConfig) -> AcdcDataset:
    """ACDC cardiac MRI, SSL4MIS HDF5 volumes (RV, Myo, LV)."""
    return AcdcDataset(config)


def _frames_by_patient(folder: Path) -> dict[str, list[str]]:
    frames: dict[str, list[str]] = {}
    for path in sorted(folder.glob("*.h5")):
        match = FRAME_FILE.match(path.name)
        if match:
            frames.setdefault(match["patient"], []).append(path.name[: -len(".h5")])
    if not frames:
        raise DataError(f"{folder}: no <patient>_frameNN.h5 files")
    return frames

