"""Medical Segmentation Decathlon layout: a task folder with dataset.json and NIfTI image/label pairs."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from samora_kit.api import DataError, Volume, check_same_geometry, did_you_mean, normalise, read_nifti

from .common import DatasetConfig, SplitCases, check_num_classes, check_same_shape, checked_label, existing_dir

NAME = "decathlon"
EXAMPLE = {"root": "../shared/data/msd_hippocampus",
           "train": {"split_file": "split.json", "key": "support_sets.k1.0"},
           "test": {"split_file": "split.json", "key": "test"}}


class DecathlonConfig(DatasetConfig):
    slice_axis: int = Field(default=2, ge=0, le=2)  # the axis cut into 2D slices


class DecathlonDataset(SplitCases):
    """MSD task folder: labelled `training` cases of dataset.json, one NIfTI pair each."""

    def __init__(self, config: DecathlonConfig):
        self.config = config
        self.root = existing_dir(config.root, "an MSD task folder containing dataset.json")
        index_file = self.root / "dataset.json"
        index = _read_json(index_file)
        names = _label_names(index, index_file)
        self.num_classes = check_num_classes(config.num_classes, len(names), str(index_file))
        self.class_names = names
        self.modality = _single_modality(index, index_file)
        self.pairs = _training_pairs(index, index_file, self.root)  # case id -> (image, label)
        ids = list(self.pairs)
        super().__init__({"train": config.train.resolve(ids, self.root),
                          "test": config.test.resolve(ids, self.root)})

    def load_case(self, case_id: str) -> Volume:
        if case_id not in self.pairs:
            raise DataError(f"{self.root / 'dataset.json'}: no case {case_id!r}{did_you_mean(case_id, self.pairs)}")
        image_path, label_path = self.pairs[case_id]
        axis = self.config.slice_axis
        image, spacing, image_file = read_nifti(image_path, axis)  # Z, H, W
        label, _, label_file = read_nifti(label_path, axis)        # Z, H, W
        check_same_shape(image, label, str(image_path), str(label_path))
        check_same_geometry(image_file, label_file, image_path, label_path)
        return Volume(case_id=case_id,
                      image=normalise(image, self.config.intensity, self.modality, str(image_path)),
                      label=checked_label(label, self.num_classes, str(label_path)),
                      spacing=spacing, source=str(image_path),
                      meta={"label_source": str(label_path), "slice_axis": axis, "modality": self.modality})


def build_decathlon(config: DecathlonConfig) -> DecathlonDataset:
    """Medical Segmentation Decathlon task folder (dataset.json + NIfTI)."""
    return DecathlonDataset(config)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: no such file; an MSD task folder needs a dataset.json")
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    for key in ("labels", "training"):
        if key not in index:
            raise DataError(f"{path}: missing key {key!r}; an MSD dataset.json has labels, modality and training")
    return index


def _label_names(index: dict, path: Path) -> list[str]:
    labels = index["labels"]
    try:
        by_value = {int(value): str(name) for value, name in labels.items()}
    except (AttributeError, ValueError):
        raise DataError(f"{path}: 'labels' must map integer values to names, got {labels!r}") from None
    if sorted(by_value) != list(range(len(by_value))) or len(by_value) < 2:
        raise DataError(f"{path}: 'labels' must number 0 (background) .. N without gaps, got {sorted(by_value)}")
    return [by_value[value] for value in range(1, len(by_value))]


def _single_modality(index: dict, path: Path) -> str:
    modality = index.get("modality") or {}
    if isinstance(modality, str):
        return modality
    if len(modality) > 1:
        raise DataError(f"{path}: {len(modality)} modalities {list(modality.values())}; "
                        "only single-channel images are supported")
    return str(next(iter(modality.values()), ""))


def _training_pairs(index: dict, path: Path, root: Path) -> dict[str, tuple[Path, Path]]:
    pairs: dict[str, tuple[Path, Path]] = {}
    for n, entry in enumerate(index["training"]):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise DataError(f"{path}: training[{n}] must be {{\"image\": ..., \"label\": ...}}, got {entry!r}")
        case_id = _stem(entry["image"])
        if case_id in pairs:
            raise DataError(f"{path}: case {case_id!r} appears twice in 'training'")
        pairs[case_id] = (root / entry["image"], root / entry["label"])
    return pairs


def _stem(relative: str) -> str:
    name = Path(relative).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
