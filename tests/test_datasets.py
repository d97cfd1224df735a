"""Dataset adapters, case selection, NIfTI I/O and intensity normalisation."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from pydantic import ValidationError

from samora_kit.data.intensity import IntensityConfig, normalise
from samora_kit.data.nifti import read_nifti, write_nifti_like
from samora_kit.data.selection import CaseSelection
from samora_kit.errors import DataError
from samora_kit.interfaces import DatasetAdapter
from samora_kit_plugins.datasets import mni152_demo

from .synthetic import make_synapse

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HIPPOCAMPUS = SHARED_DATA / "msd_hippocampus"
ACDC = SHARED_DATA / "acdc"
needs_hippocampus = pytest.mark.skipif(not (HIPPOCAMPUS / "dataset.json").is_file(),
                                       reason=f"MSD hippocampus data not found at {HIPPOCAMPUS}")
needs_acdc = pytest.mark.skipif(not (ACDC / "volumes").is_dir(), reason=f"ACDC data not found at {ACDC}")


@pytest.fixture(scope="module")
def registry(dataset_registry):
    return dataset_registry


def build(registry, name: str, config: dict):
    return registry.get("dataset", name).build(config)


# ---- synthetic MSD task folders -------------------------------------------------------------

def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def make_msd_task(root: Path, cases: dict[str, tuple[np.ndarray, np.ndarray]], modality: str = "MRI",
                  labels: dict | None = None) -> Path:
    for case, (image, label) in cases.items():
        save_nifti(root / "imagesTr" / f"{case}.nii.gz", image)
        save_nifti(root / "labelsTr" / f"{case}.nii.gz", label)
    index = {"modality": {"0": modality}, "labels": labels or {"0": "background", "1": "a", "2": "b"},
             "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases]}
    (root / "dataset.json").write_text(json.dumps(index))
    return root


def random_case(shape=(6, 7, 5), classes: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 500, shape).astype(np.float32), rng.integers(0, classes + 1, shape).astype(np.uint8))


def msd_config(root: Path, **extra) -> dict:
    return {"root": str(root), "train": {"cases": ["case_a"]}, "test": {"cases": ["case_b"]}, **extra}


# ---- registry ---------------------------------------------------------------------------------

def test_registry_lists_the_dataset_adapters_with_valid_examples(registry):
    assert registry.names("dataset") == ["acdc", "decathlon", "la", "mni152_demo", "promise12", "synapse",
                                         "unlabelled_pool"]
    for spec in registry.specs("dataset"):
        spec.config_model.model_validate(spec.example)  # the example is a valid config
        assert spec.summary


def test_dataset_configs_reject_unknown_keys(registry):
    with pytest.raises(ValidationError, match="slice_axes"):
        registry.get("dataset", "decathlon").config_model.model_validate(
            {"root": "x", "train": {"cases": ["a"]}, "test": {"cases": ["b"]}, "slice_axes": 1})


# ---- decathlon --------------------------------------------------------------------------------

@needs_hippocampus
def test_decathlon_adapter_reads_hippocampus_support_set(registry):
    dataset = build(registry, "decathlon", {
        "root": str(HIPPOCAMPUS),
        "train": {"split_file": "split.json", "key": "support_sets.k1.0"},
        "test": {"split_file": "split.json", "key": "test"}})
    split = json.loads((HIPPOCAMPUS / "split.json").read_text())
    assert isinstance(dataset, DatasetAdapter)
    assert dataset.cases("train") == split["support_sets"]["k1"][0]
    assert dataset.cases("test") == split["test"] and len(dataset.cases("test")) == 40
    assert (dataset.num_classes, dataset.class_names) == (2, ["Anterior", "Posterior"])
    volume = dataset.load_case(dataset.cases("train")[0])
    assert volume.image.dtype == np.float32 and volume.label.dtype == np.int64
    assert 0.0 <= volume.image.min() and volume.image.max() <= 1.0 and volume.image.max() > 0.9
    assert set(np.unique(volume.label)) == {0, 1, 2}
    assert volume.spacing == (1.0, 1.0, 1.0)
    raw = nib.load(volume.source).shape
    assert volume.image.shape == (raw[2], raw[0], raw[1])  # slice axis 2 comes first


@needs_hippocampus
def test_decathlon_num_classes_is_checked_against_dataset_json(registry):
    with pytest.raises(DataError, match=r"dataset.json.*num_classes = 3.*declares 2"):
        build(registry, "decathlon", {"root": str(HIPPOCAMPUS), "num_classes": 3,
                                      "train": {"cases": ["hippocampus_003"]}, "test": {"cases": ["hippocampus_019"]}})


def test_decathlon_slice_axis_puts_that_axis_first(registry, tmp_path):
    image, label = random_case(shape=(4, 5, 6))
    root = make_msd_task(tmp_path, {"case_a": (image, label), "case_b": (image, label)})
    for axis, shape in ((0, (4, 5, 6)), (1, (5, 4, 6)), (2, (6, 4, 5))):
        volume = build(registry, "decathlon", msd_config(root, slice_axis=axis)).load_case("case_a")
        assert volume.image.shape == volume.label.shape == shape
        np.testing.assert_array_equal(volume.label, np.moveaxis(label, axis, 0))


def test_label_outside_declared_classes_names_file_and_values(registry, tmp_path):
    image, label = random_case()
    label[0, 0, :2] = (5, 7)
    root = make_msd_task(tmp_path, {"case_a": (image, label), "case_b": random_case(seed=1)})
    dataset = build(registry, "decathlon", msd_config(root))
    with pytest.raises(DataError, match=r"labelsTr/case_a\.nii\.gz: label values \[5, 7\] are outside 0\.\.2"):
        dataset.load_case("case_a")


def test_image_label_shape_mismatch_names_both_files(registry, tmp_path):
    image, _ = random_case(shape=(6, 7, 5))
    _, label = random_case(shape=(6, 7, 4))
    root = make_msd_task(tmp_path, {"case_a": (image, label), "case_b": random_case(seed=1)})
    with pytest.raises(DataError, match=r"imagesTr/case_a\.nii\.gz.*labelsTr/case_a\.nii\.gz"):
        build(registry, "decathlon", msd_config(root)).load_case("case_a")


def test_corrupted_nifti_is_reported_by_name(registry, tmp_path):
    root = make_msd_task(tmp_path, {"case_a": random_case(shape=(30, 30, 30)), "case_b": random_case(seed=1)})
    image_file = root / "imagesTr" / "case_a.nii.gz"
    image_file.write_bytes(image_file.read_bytes()[:2000])  # truncated download
    with pytest.raises(DataError, match=r"imagesTr/case_a\.nii\.gz: unreadable or truncated NIfTI"):
        build(registry, "decathlon", msd_config(root)).load_case("case_a")
    image_file.write_bytes(gzip.compress(b"not a nifti header at all" * 20))
    with pytest.raises(DataError, match=r"imagesTr/case_a\.nii\.gz: unreadable"):
        read_nifti(image_file)


def test_missing_nifti_is_reported_by_name(registry, tmp_path):
    root = make_msd_task(tmp_path, {"case_a": random_case(), "case_b": random_case(seed=1)})
    (root / "labelsTr" / "case_b.nii.gz").unlink()
    with pytest.raises(DataError, match=r"labelsTr/case_b\.nii\.gz: no such NIfTI file"):
        build(registry, "decathlon", msd_config(root)).load_case("case_b")


def test_non_3d_nifti_is_rejected_with_its_shape(tmp_path):
    path = save_nifti(tmp_path / "four_d.nii.gz", np.zeros((4, 4, 4, 2), np.float32))
    with pytest.raises(DataError, match=r"four_d\.nii\.gz: expected a 3D image, got shape \(4, 4, 4, 2\)"):
        read_nifti(path)


def test_missing_dataset_json_is_reported(registry, tmp_path):
    with pytest.raises(DataError, match=r"dataset\.json: no such file"):
        build(registry, "decathlon", msd_config(tmp_path))


def test_nifti_write_keeps_affine_round_trip(tmp_path):
    affine = np.array([[0.0, -0.8, 0.0, 12.5],   # rotated axes, anisotropic spacing, non-zero origin
                       [0.9, 0.0, 0.0, -40.0],
                       [0.0, 0.0, 2.5, 7.0],
                       [0.0, 0.0, 0.0, 1.0]])
    source = save_nifti(tmp_path / "image.nii.gz", np.random.default_rng(0).random((5, 6, 7), np.float32), affine)
    array, spacing, reference = read_nifti(source, slice_axis=1)
    assert array.shape == (6, 5, 7) and spacing == pytest.approx((0.8, 0.9, 2.5))
    prediction = (array > 0.5).astype(np.uint8)  # Z, H, W
    out = write_nifti_like(reference, prediction, 1, tmp_path / "out" / "prediction.nii.gz")
    written = nib.load(str(out))
    np.testing.assert_allclose(written.affine, affine)
    np.testing.assert_allclose(written.header.get_zooms(), (0.9, 0.8, 2.5))
    assert written.get_data_dtype() == np.uint8
    back, back_spacing, _ = read_nifti(out, slice_axis=1)
    np.testing.assert_array_equal(back, prediction)
    assert back_spacing == spacing
    assert sorted(p.name for p in out.parent.iterdir()) == ["prediction.nii.gz"]  # no temp files left


def test_nifti_write_rejects_a_shape_that_does_not_match_the_reference(tmp_path):
    _, _, reference = read_nifti(save_nifti(tmp_path / "image.nii.gz", np.zeros((5, 6, 7), np.float32)))
    with pytest.raises(DataError, match=r"prediction\.nii\.gz.*reference image has shape \(5, 6, 7\)"):
        write_nifti_like(reference, np.zeros((7, 5, 5)), 2, tmp_path / "prediction.nii.gz")


# ---- ACDC -------------------------------------------------------------------------------------

@needs_acdc
def test_acdc_patient_selection_expands_to_both_frames(registry):
    dataset = build(registry, "acdc", {"root": str(ACDC),
                                       "train": {"split_file": "split.json", "key": "support_sets.k3.0"},
                                       "test": {"split_file": "split.json", "key": "test"}})
    patients = json.loads((ACDC / "split.json").read_text())["support_sets"]["k3"][0]
    assert dataset.cases("train") == [f"{p}_frame0{f}" for p in patients for f in (1, 2)]
    assert len(dataset.cases("test")) == 40
    assert dataset.class_names == ["RV", "Myo", "LV"]
    volume = dataset.load_case(dataset.cases("train")[0])
    assert volume.image.dtype == np.float32 and 0.0 <= volume.image.min() and volume.image.max() <= 1.0
    assert set(np.unique(volume.label)) == {0, 1, 2, 3}
    assert volume.spacing == (1.0, 1.0, 1.0) and volume.meta["spacing_known"] is False


def write_acdc_frame(folder: Path, case: str, image: np.ndarray, label: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / f"{case}.h5", "w") as h5:
        h5["image"], h5["label"] = image, label
    return folder / f"{case}.h5"


def test_acdc_unknown_patient_and_bad_label_are_reported(registry, tmp_path):
    rng = np.random.default_rng(0)
    for patient in ("patient001", "patient002"):
        for frame in ("frame01", "frame02"):
            label = rng.integers(0, 4, (3, 8, 9)).astype(np.uint8)
            write_acdc_frame(tmp_path / "volumes", f"{patient}_{frame}", rng.random((3, 8, 9), np.float32), label)
    with pytest.raises(DataError, match=r"unknown case id 'patient01' \(did you mean 'patient001'\?\)"):
        build(registry, "acdc", {"root": str(tmp_path), "train": {"cases": ["patient01"]},
                                 "test": {"cases": ["patient002"]}})
    write_acdc_frame(tmp_path / "volumes", "patient002_frame02", rng.random((3, 8, 9), np.float32),
                     np.full((3, 8, 9), 4, np.uint8))
    dataset = build(registry, "acdc", {"root": str(tmp_path), "train": {"cases": ["patient001"]},
                                       "test": {"cases": ["patient002"]}})
    with pytest.raises(DataError, match=r"patient002_frame02\.h5: label values \[4\] are outside 0\.\.3"):
        dataset.load_case("patient002_frame02")


# ---- Synapse ----------------------------------------------------------------------------------

def test_synapse_reads_transunet_layout_from_list_files(registry, tmp_path):
    root = make_synapse(tmp_path)
    dataset = build(registry, "synapse", {"root": str(root), "list_dir": "lists"})
    assert len(dataset.cases("train")) == 4 and dataset.cases("test") == ["case0001"]
    assert dataset.num_classes == 8 and dataset.class_names[0] == "spleen" and dataset.class_names[-1] == "pancreas"
    one_slice = dataset.load_case("case0005_slice002")
    assert one_slice.image.shape == one_slice.label.shape == (1, 16, 16)
    assert one_slice.label.dtype == np.int64 and one_slice.label.max() <= 8
    volume = dataset.load_case("case0001")
    assert volume.image.shape == (4, 16, 16) and volume.image.dtype == np.float32


def test_synapse_subset_list_selects_those_slices(registry, tmp_path):
    root = make_synapse(tmp_path)
    dataset = build(registry, "synapse", {"root": str(root), "list_dir": "lists",
                                          "train": {"list_file": "lists/train_2.txt"}})
    assert dataset.cases("train") == ["case0005_slice001", "case0006_slice000"]


def test_synapse_corrupted_slice_is_reported_by_name(registry, tmp_path):
    root = make_synapse(tmp_path)
    broken = root / "train_npz" / "case0005_slice001.npz"
    broken.write_bytes(broken.read_bytes()[:100])
    dataset = build(registry, "synapse", {"root": str(root), "list_dir": "lists"})
    with pytest.raises(DataError, match=r"case0005_slice001\.npz: unreadable or truncated"):
        dataset.load_case("case0005_slice001")


# ---- MNI152 demo ------------------------------------------------------------------------------

def test_mni152_demo_slabs_are_labelled_and_split_without_adjacency(registry):
    dataset = build(registry, "mni152_demo", {})
    train, test = dataset.cases("train"), dataset.cases("test")
    assert (len(train), len(test)) == (2, 4)
    numbers = lambda ids: [int(case[len("slab"):]) for case in ids]  # noqa: E731
    assert all(abs(a - b) > 1 for a in numbers(train) for b in numbers(test))
    volume = dataset.load_case(train[0])
    assert volume.image.shape[0] == 12 and volume.image.dtype == np.float32
    assert 0.0 <= volume.image.min() and volume.image.max() <= 1.0
    assert set(np.unique(volume.label)) == {0, 1, 2}
    assert volume.spacing == (1.0, 2.0, 2.0)
    assert dataset.class_names == ["grey matter", "white matter"]


def test_mni152_demo_without_nilearn_says_pip_install(registry, monkeypatch):
    monkeypatch.setattr(mni152_demo.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install nilearn"):
        build(registry, "mni152_demo", {})


# ---- case selection ---------------------------------------------------------------------------

SPLIT = {"test": ["c1", "c2"], "support_sets": {"k3": [["c3", "c4", "c5"], ["c1", "c3", "c5"]]}}
AVAILABLE = ["c1", "c2", "c3", "c4", "c5"]


def write_split(folder: Path) -> Path:
    (folder / "split.json").write_text(json.dumps(SPLIT))
    return folder


def test_selection_follows_dotted_key_into_split_file(tmp_path):
    write_split(tmp_path)
    assert CaseSelection(split_file="split.json", key="support_sets.k3.1").resolve(AVAILABLE, tmp_path) == \
        ["c1", "c3", "c5"]
    assert CaseSelection(split_file="split.json", key="test").resolve(AVAILABLE, tmp_path) == ["c1", "c2"]


def test_selection_missing_key_names_file_and_key(tmp_path):
    write_split(tmp_path)
    with pytest.raises(DataError, match=r"split\.json: no key 'k4' at support_sets of 'support_sets\.k4\.0'.*k3"):
        CaseSelection(split_file="split.json", key="support_sets.k4.0").resolve(AVAILABLE, tmp_path)
    with pytest.raises(DataError, match=r"split\.json: no key 'supportsets'.*did you mean 'support_sets'"):
        CaseSelection(split_file="split.json", key="supportsets.k3.0").resolve(AVAILABLE, tmp_path)
    with pytest.raises(DataError, match=r"split\.json.*not an index 0\.\.1"):
        CaseSelection(split_file="split.json", key="support_sets.k3.7").resolve(AVAILABLE, tmp_path)
    with pytest.raises(DataError, match=r"expected a list of case ids, found a mapping with keys k3"):
        CaseSelection(split_file="split.json", key="support_sets").resolve(AVAILABLE, tmp_path)
    with pytest.raises(DataError, match=r"nowhere\.json: no such case selection file"):
        CaseSelection(split_file="nowhere.json", key="test").resolve(AVAILABLE, tmp_path)


def test_selection_unknown_id_suggests_the_closest(tmp_path):
    with pytest.raises(DataError, match=r"unknown case id 'c33' \(did you mean 'c3'\?\)"):
        CaseSelection(cases=["c1", "c33"]).resolve(AVAILABLE, tmp_path)


def test_selection_needs_exactly_one_source():
    with pytest.raises(ValidationError, match="exactly one of"):
        CaseSelection(cases=["c1"], list_file="ids.txt")
    with pytest.raises(ValidationError, match="exactly one of"):
        CaseSelection()
    with pytest.raises(ValidationError, match="split_file and key go together"):
        CaseSelection(split_file="split.json")


def test_selection_reads_list_file_relative_to_dataset_root(tmp_path):
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "ids.txt").write_text("c2\n\n# a comment\nc4  # trailing note\n")
    assert CaseSelection(list_file="lists/ids.txt").resolve(AVAILABLE, tmp_path) == ["c2", "c4"]


def test_selection_count_draws_the_same_subset_for_the_same_seed(tmp_path):
    draw = lambda seed: CaseSelection(cases=AVAILABLE, count=3, seed=seed).resolve(AVAILABLE, tmp_path)  # noqa: E731
    assert draw(1) == draw(1) and len(draw(1)) == 3
    assert {tuple(draw(seed)) for seed in range(10)} != {tuple(draw(1))}
    with pytest.raises(DataError, match="count = 9 but the selection holds only 5"):
        CaseSelection(cases=AVAILABLE, count=9).resolve(AVAILABLE, tmp_path)


# ---- intensity --------------------------------------------------------------------------------

def test_ct_window_maps_to_unit_range_and_clips():
    hounsfield = np.array([-1000.0, -125.0, 75.0, 275.0, 3000.0])
    scaled = normalise(hounsfield, IntensityConfig(mode="ct"))
    np.testing.assert_allclose(scaled, [0.0, 0.0, 0.5, 1.0, 1.0])
    assert scaled.dtype == np.float32


def test_mr_percentiles_are_per_volume():
    rng = np.random.default_rng(0)
    volume = rng.normal(300.0, 50.0, (8, 16, 16))
    scaled = normalise(volume, IntensityConfig(mode="mr"))
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    np.testing.assert_allclose(normalise(volume * 10 + 7, IntensityConfig(mode="mr")), scaled, atol=1e-5)
    assert not normalise(np.full((2, 2, 2), 5.0), IntensityConfig(mode="mr")).any()  # constant volume -> 0


@pytest.mark.parametrize("shape", [(3, 5, 7), (4, 64, 64), (70, 128, 128)])  # the last: past torch.quantile's size
def test_intensity_scaling_is_monais_bit_for_bit(shape):
    from monai.transforms import ScaleIntensityRange, ScaleIntensityRangePercentiles

    rng = np.random.default_rng(len(shape) + shape[-1])
    volume = (rng.standard_normal(shape) * 200 + 50).astype(np.float32)
    ct, mr = IntensityConfig(mode="ct"), IntensityConfig(mode="mr")
    monai_ct = ScaleIntensityRange(*ct.ct_window, b_min=0.0, b_max=1.0, clip=True)(volume)
    monai_mr = ScaleIntensityRangePercentiles(*mr.percentiles, b_min=0.0, b_max=1.0, clip=True)(volume)
    for ours, theirs in ((normalise(volume, ct), monai_ct), (normalise(volume[::-1], mr)[::-1], monai_mr)):
        theirs = np.asarray(theirs, dtype=np.float32)
        assert ours.dtype == np.float32 and ours.shape == theirs.shape
        np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))  # -0.0 and 0.0 told apart


def test_auto_mode_reads_the_modality():
    hounsfield = np.linspace(-1000, 1000, 101)
    config = IntensityConfig()
    np.testing.assert_allclose(normalise(hounsfield, config, "CT"), normalise(hounsfield, IntensityConfig(mode="ct")))
    np.testing.assert_allclose(normalise(hounsfield, config, "MRI"), normalise(hounsfield, IntensityConfig(mode="mr")))


def test_none_mode_rejects_values_outside_unit_range():
    ok = np.array([0.0, 0.25, 1.0])
    np.testing.assert_array_equal(normalise(ok, IntensityConfig(mode="none")), ok)
    with pytest.raises(DataError, match=r"scan\.h5: .*span \[0, 255\]"):
        normalise(np.array([0.0, 255.0]), IntensityConfig(mode="none"), source="scan.h5")


def test_intensity_config_rejects_reversed_ranges():
    with pytest.raises(ValidationError, match="ct_window"):
        IntensityConfig(ct_window=(275, -125))
    with pytest.raises(ValidationError, match="percentiles"):
        IntensityConfig(percentiles=(99.5, 0.5))
