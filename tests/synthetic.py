"""Small synthetic data sets in real on-disk layouts, for tests of the machinery."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np


def armed(**switches: str) -> dict[str, str]:
    """Environment for a subprocess with the test-only kill switches of tests/kill_switch armed, e.g.
    armed(SAMORA_KIT_TEST_KILL_AT_STEP="7")."""
    folder = str(Path(__file__).parent / "kill_switch")
    return {"PYTHONPATH": os.pathsep.join(p for p in (folder, os.environ.get("PYTHONPATH")) if p), **switches}


def blob_case(rng: np.random.Generator, shape=(24, 24, 8)) -> tuple[np.ndarray, np.ndarray]:
    """An MR-like volume with two nested ellipsoids labelled 1 (shell) and 2 (core)."""
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    centre = [s / 2 + rng.uniform(-2, 2) for s in shape]
    r = np.sqrt(sum(((g - c) / (s / 3)) ** 2 for g, c, s in zip((zz, yy, xx), centre, shape)))
    label = np.where(r < 0.5, 2, np.where(r < 1.0, 1, 0)).astype(np.uint8)
    image = (100 + 300 * (label == 1) + 600 * (label == 2) + rng.normal(0, 20, shape)).astype(np.float32)
    return image, label


def write_decathlon(root: Path, n_cases: int = 5, shape=(24, 24, 8), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    training = []
    for i in range(n_cases):
        image, label = blob_case(rng, shape)
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"case_{i:03d}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"case_{i:03d}.nii.gz")
        training.append({"image": f"./imagesTr/case_{i:03d}.nii.gz", "label": f"./labelsTr/case_{i:03d}.nii.gz"})
    index = {"name": "blobs", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "shell", "2": "core"},
             "numTraining": n_cases, "training": training}
    (root / "dataset.json").write_text(json.dumps(index))
    return root


def tiny_recipe(data_root: Path, run_dir: Path, train_cases: list[str], test_cases: list[str],
                **train) -> str:
    """A recipe for the tiny SAM on a synthetic Decathlon folder; `train` overrides [train]."""
    train = {"epochs": 2, "batch_size": 4, "lr": 0.005, "warmup": 0.25, "checkpoint_every": 2,
             "log_every": 1, **train}
    train_lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in train.items())
    return f"""
task = "segment"

[run]
name = "test"
output_dir = "{run_dir}"
seed = 7
device = "cpu"

[backbone]
name = "sam"
variant = "tiny"
image_size = 64

[decoder]
name = "samed"

[data]
name = "decathlon"
root = "{data_root}"
train = {{ cases = {json.dumps(train_cases)} }}
test = {{ cases = {json.dumps(test_cases)} }}

[train]
{train_lines}

[eval]
overlays = 1
"""


def pool_recipe(data_root: Path, run_dir: Path, seed: int, max_steps: int, tail: str) -> str:
    """A self-supervised recipe for the tiny SAM on a synthetic folder's images; `tail` says
    what it trains ([[experts]] entries or [base_pretraining])."""
    task = "pretrain_experts" if "[[experts]]" in tail else "pretrain_base"
    return f"""
task = "{task}"

[run]
name = "{run_dir.name}"
output_dir = "{run_dir}"
seed = {seed}
device = "cpu"

[backbone]
name = "sam"
variant = "tiny"
image_size = 64

[data]
name = "unlabelled_pool"
root = "{data_root}"
subdir = "imagesTr"

[train]
epochs = 1
batch_size = 4
max_steps = {max_steps}
warmup = 0.25
lr = 0.001
log_every = 1
{tail}"""


# the three experts of SAMora's stage 1, sized for the tiny SAM (append to pool_recipe's text)
STAGE1_EXPERTS = """
[[experts]]
name = "image"
pretext = { name = "simclrv2", hidden_dim = 32 }

[[experts]]
name = "patch"
pretext = { name = "mae", hidden_dim = 32 }

[[experts]]
name = "pixel"
pretext = { name = "denoise", decoder_channels = [16, 16, 8, 8] }
"""


def make_synapse(root: Path) -> Path:
    """TransUNet's Synapse layout: train_npz/<slice>.npz, test_vol_h5/<case>.npy.h5, lists/ (train.txt,
    a 2-slice subset train_2.txt, test_vol.txt)."""
    rng = np.random.default_rng(0)
    (root / "train_npz").mkdir(parents=True)
    (root / "test_vol_h5").mkdir()
    (root / "lists").mkdir()
    slices = [f"case0005_slice{n:03d}" for n in range(3)] + ["case0006_slice000"]
    for name in slices:
        np.savez(root / "train_npz" / f"{name}.npz", image=rng.random((16, 16), np.float32),
                 label=rng.integers(0, 9, (16, 16)).astype(np.float32))
    with h5py.File(root / "test_vol_h5" / "case0001.npy.h5", "w") as h5:
        h5["image"], h5["label"] = rng.random((4, 16, 16), np.float32), rng.integers(0, 9, (4, 16, 16))
    (root / "lists" / "train.txt").write_text("\n".join(slices) + "\n")
    (root / "lists" / "train_2.txt").write_text("case0005_slice001\ncase0006_slice000\n")
    (root / "lists" / "test_vol.txt").write_text("case0001\n")
    return root


LA_HWD = (6, 5, 3)


def la_arrays(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A z-scored image (as UA-MT stores it) and a 0/1 label, H,W,D."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=LA_HWD).astype(np.float32)
    label = (rng.random(LA_HWD) > 0.6).astype(np.uint8)
    return image, label


def write_la_case(folder: Path, case: str, seed: int = 0, **override) -> Path:
    """UA-MT's <folder>/<case>/mri_norm2.h5; `override` replaces or (None) drops a dataset."""
    image, label = la_arrays(seed)
    datasets = {"image": image, "label": label, **override}
    path = folder / case / "mri_norm2.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as h5:
        for key, value in datasets.items():
            if value is not None:
                h5.create_dataset(key, data=value)
    return path


P12_SPACING_XYZ = (0.625, 0.5, 3.6)


def p12_arrays(seed: int, shape=(4, 7, 6)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 1200, size=shape).astype(np.int16)
    label = (rng.random(shape) > 0.7).astype(np.uint8)
    return image, label


def write_p12_case(folder: Path, case: str, seed: int = 0) -> None:
    """PROMISE12's <folder>/<case>.mhd and <case>_segmentation.mhd (MetaImage)."""
    from samora_kit_plugins.datasets.promise12 import write_metaimage

    folder.mkdir(parents=True, exist_ok=True)
    image, label = p12_arrays(seed)
    write_metaimage(folder / f"{case}.mhd", image, P12_SPACING_XYZ)
    write_metaimage(folder / f"{case}_segmentation.mhd", label, P12_SPACING_XYZ)


def relabel(data_root: Path, case: str, array: np.ndarray | None = None, affine: np.ndarray | None = None) -> None:
    """Rewrite a Decathlon case's label file with another array and/or affine (bad-data tests)."""
    path = data_root / "labelsTr" / f"{case}.nii.gz"
    label = nib.load(str(path))
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj) if array is None else array,
                             label.affine if affine is None else affine), str(path))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: compare before and after to show nothing changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
