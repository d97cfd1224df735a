"""The unlabelled pool of stage 1: every slice of every selected file, in every supported format."""

from __future__ import annotations

import importlib.util
import json
import re
import time
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from samora_kit.errors import DataError, SamoraError
from samora_kit.interfaces import DatasetAdapter


needs_pydicom = pytest.mark.skipif(importlib.util.find_spec("pydicom") is None,
                                   reason="DICOM support needs pydicom (pip install pydicom)")


@pytest.fixture(scope="module")
def registry(dataset_registry):
    return dataset_registry


def pool(registry, root: Path, **config):
    return registry.get("dataset", "unlabelled_pool").build({"root": str(root), **config})


def ramp_volume(depth: int, h: int = 6, w: int = 5) -> np.ndarray:
    """Slice z is a ramp plus 100 z, so slice means tell the slices apart after normalising."""
    return np.stack([np.arange(h * w, dtype=np.float32).reshape(h, w) + 100 * z for z in range(depth)])


# ---- registry and the real pool ------------------------------------------------------------------

def test_unlabelled_pool_is_registered_with_a_valid_example(registry):
    spec = registry.get("dataset", "unlabelled_pool")
    spec.config_model.model_validate(spec.example)
    assert spec.summary


def test_hippocampus_unlabeled_pool_counts_every_slice_of_every_selected_volume(registry, hippocampus):
    started = time.perf_counter()
    dataset = pool(registry, hippocampus, subdir="imagesTr",
                   selection={"split_file": "split.json", "key": "unlabeled_pool"})
    slices = dataset.slice_dataset(64)
    elapsed = time.perf_counter() - started
    selected = json.loads((hippocampus / "split.json").read_text())["unlabeled_pool"]
    assert isinstance(dataset, DatasetAdapter)
    assert (dataset.num_classes, dataset.class_names) == (0, [])
    assert dataset.cases("train") == selected and len(selected) == 200 and dataset.cases("test") == []
    depths = {case: nib.load(str(hippocampus / "imagesTr" / f"{case}.nii.gz")).shape[2] for case in selected}
    assert len(slices) == sum(depths.values())  # every slice, not only the middle one
    assert [z for case, z in slices.index if case == selected[0]] == list(range(depths[selected[0]]))
    assert elapsed < 10, f"building the 200-volume pool took {elapsed:.1f} s"  # headers only, no pixels
    item = slices[len(slices) // 2]
    assert item.shape == (3, 64, 64) and item.dtype == torch.float32
    assert 0.0 <= item.min() and item.max() <= 1.0 and item.max() > 0.5
    volume = dataset.load_case(selected[0])
    assert volume.label is None and volume.image.shape[0] == depths[selected[0]]
    with pytest.raises(SamoraError, match="unknown split 'val'"):
        dataset.cases("val")


def test_without_selection_every_file_is_found_recursively_except_label_folders(registry, tmp_path):
    for folder, depth in (("imagesTr", 3), ("imagesTs", 2), ("labelsTr", 3)):
        (tmp_path / folder).mkdir()
        nib.save(nib.Nifti1Image(ramp_volume(4, 5, depth), np.eye(4)), str(tmp_path / folder / "case.nii.gz"))
    nib.save(nib.Nifti1Image(ramp_volume(4, 5, 2), np.eye(4)), str(tmp_path / "imagesTr" / "._case.nii.gz"))
    dataset = pool(registry, tmp_path)
    assert dataset.cases("train") == ["imagesTr/case", "imagesTs/case"]  # no labels, no macOS metadata
    assert len(dataset.slice_dataset(32)) == 3 + 2
    assert pool(registry, tmp_path, subdir="imagesTs").cases("train") == ["case"]


def test_selection_ids_are_file_stems_and_unknown_ids_are_named(registry, tmp_path):
    for name in ("a", "b", "c"):
        np.savez(tmp_path / f"{name}.npz", image=ramp_volume(2))
    assert pool(registry, tmp_path, selection={"cases": ["c", "a"]}).cases("train") == ["c", "a"]
    with pytest.raises(DataError, match=r"unknown case id 'd'"):
        pool(registry, tmp_path, selection={"cases": ["a", "d"]})


# ---- formats -----------------------------------------------------------------------------------------

def test_npz_folder_uses_every_slice_of_3d_arrays_and_one_per_2d_array(registry, tmp_path):
    np.savez(tmp_path / "volume.npz", image=ramp_volume(5), label=np.zeros((5, 6, 5)))
    np.savez_compressed(tmp_path / "slice.npz", image=ramp_volume(1)[0])
    np.savez(tmp_path / "other_key.npz", scan=ramp_volume(2))
    dataset = pool(registry, tmp_path, selection={"cases": ["volume", "slice"]})
    slices = dataset.slice_dataset(16)
    assert len(slices) == 6 and slices.index[:5] == [("volume", z) for z in range(5)]
    means = [float(slices[i].mean()) for i in range(5)]
    assert means == sorted(means) and means[0] < means[-1]  # slices first, in order
    keyed = pool(registry, tmp_path, selection={"cases": ["other_key"]}, npz_key="scan")
    assert len(keyed.slice_dataset(16)) == 2
    with pytest.raises(DataError, match=r"other_key\.npz: no array 'image'; found \['scan'\]"):
        pool(registry, tmp_path).slice_dataset(16)


def test_h5_folder_reads_the_image_dataset_slices_first(registry, tmp_path):
    with h5py.File(tmp_path / "patient1_frame01.h5", "w") as h5:
        h5["image"] = ramp_volume(7)
        h5["label"] = np.zeros((7, 6, 5), np.uint8)
    dataset = pool(registry, tmp_path, intensity={"mode": "mr"})
    assert dataset.cases("train") == ["patient1_frame01"]
    assert len(dataset.slice_dataset(16)) == 7
    assert dataset.load_case("patient1_frame01").image.shape == (7, 6, 5)


def test_pictures_are_single_slices_and_colour_becomes_luminance(registry, tmp_path):
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    Image.fromarray(grey).save(tmp_path / "grey.png")
    colour = np.zeros((6, 8, 3), np.uint8)
    colour[..., 0], colour[..., 1], colour[..., 2] = 200, 100, 50
    Image.fromarray(colour).save(tmp_path / "colour.png")
    Image.fromarray((grey.astype(np.uint16) * 250)).save(tmp_path / "deep.png")  # 16-bit grey
    Image.fromarray(colour).save(tmp_path / "photo.jpg", quality=100)
    dataset = pool(registry, tmp_path, intensity={"mode": "none"})  # keep the pictures' own scaling
    assert sorted(dataset.cases("train")) == ["colour", "deep", "grey", "photo"]
    assert len(dataset.slice_dataset(16)) == 4
    np.testing.assert_allclose(dataset.load_case("grey").image[0], grey / 255.0, atol=1e-6)
    np.testing.assert_allclose(dataset.load_case("colour").image, (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255,
                               atol=1e-5)
    np.testing.assert_allclose(dataset.load_case("deep").image[0], grey.astype(np.float64) * 250 / 65535, atol=1e-6)
    assert dataset.load_case("photo").image.shape == (1, 6, 8)


def write_dicom(path: Path, pixels: np.ndarray, *, position: float | None = None, instance: int | None = None,
                series: str = "1.2.3.4", modality: str = "CT", intercept: float = -1024.0) -> Path:
    """A minimal uncompressed single-frame MONOCHROME2 DICOM file."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID = modality, series
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, intercept
    ds.PixelSpacing = [0.7, 0.8]
    if position is not None:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0, 0, position]
    if instance is not None:
        ds.InstanceNumber = instance
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        ds.save_as(str(path), enforce_file_format=True)  # pydicom >= 3
    except TypeError:
        ds.save_as(str(path), write_like_original=False)  # pydicom 2.x
    return path


@needs_pydicom
def test_dicom_series_folder_is_one_volume_sorted_by_position_and_a_lone_file_one_slice(registry, tmp_path):
    hounsfield = [-100.0, 0.0, 100.0, 200.0]  # one constant value per slice
    # file names and instance numbers deliberately disagree with the geometry
    for z, hu in enumerate(hounsfield):
        write_dicom(tmp_path / "series" / f"img{(7 * z) % 4}.dcm", np.full((6, 5), hu + 1024),
                    position=2.5 * z - 4.0, instance=4 - z)
    write_dicom(tmp_path / "single" / "xray.dcm", np.full((6, 5), 1024 + 75.0), modality="CT")
    dataset = pool(registry, tmp_path)  # auto intensity: the DICOM Modality "CT" picks the CT window
    assert sorted(dataset.cases("train")) == ["series", "single/xray"]
    assert len(dataset.slice_dataset(16)) == 5
    volume = dataset.load_case("series")
    expected = [(hu + 125) / 400 for hu in hounsfield]  # window [-125, 275] -> [0, 1]
    np.testing.assert_allclose(volume.image.mean(axis=(1, 2)), expected, atol=1e-5)
    assert volume.spacing == pytest.approx((2.5, 0.7, 0.8))
    np.testing.assert_allclose(dataset.load_case("single/xray").image, 200 / 400, atol=1e-5)


@needs_pydicom
def test_dicom_series_without_positions_sorts_by_instance_number(registry, tmp_path):
    for z in range(3):
        write_dicom(tmp_path / "s" / f"{z}.dcm", np.full((4, 4), 1024 + 100.0 * z), instance=3 - z)
    image = pool(registry, tmp_path).load_case("s").image
    assert list(image.mean(axis=(1, 2))) == sorted(image.mean(axis=(1, 2)), reverse=True)


@needs_pydicom
def test_dicom_folder_mixing_series_is_rejected_by_name(registry, tmp_path):
    write_dicom(tmp_path / "mixed" / "a.dcm", np.zeros((4, 4)), series="1.1")
    write_dicom(tmp_path / "mixed" / "b.dcm", np.zeros((4, 4)), series="1.2")
    with pytest.raises(DataError, match=r"mixed: holds \.dcm files of 2 series"):
        pool(registry, tmp_path).load_case("mixed")


# ---- errors and options --------------------------------------------------------------------------

@pytest.mark.parametrize("name, content", [
    ("scan.nii.gz", b"\x1f\x8b truncated gzip"),
    ("scan.npz", b"PK not really a zip"),
    ("scan.h5", b"not hdf5"),
    ("scan.png", b"\x89PNG broken"),
    pytest.param("scan.dcm", b"not a dicom file", marks=needs_pydicom),
])
def test_corrupt_file_is_named_in_the_error(registry, tmp_path, name, content):
    np.savez(tmp_path / "good.npz", image=ramp_volume(2))
    (tmp_path / name).write_bytes(content)
    dataset = pool(registry, tmp_path)
    named = re.escape(str(tmp_path / name)) + ": unreadable"
    with pytest.raises(DataError, match=named):
        dataset.slice_dataset(16)
    with pytest.raises(DataError, match=named):
        dataset.load_case("scan")


def test_two_files_with_one_case_id_are_both_named(registry, tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.jpg")
    with pytest.raises(DataError, match=r"a\.(png|jpg) and .*a\.(png|jpg) both give the case id 'a'"):
        pool(registry, tmp_path)
    assert pool(registry, tmp_path, formats=["png"]).cases("train") == ["a"]


def test_empty_folder_says_what_was_searched(registry, tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"no nii, nii\.gz, npz, h5, png, jpg, dcm files found"):
        pool(registry, tmp_path)


def test_min_foreground_fraction_skips_nearly_empty_slices(registry, tmp_path):
    volume = np.zeros((5, 10, 10), np.float32)
    volume[1, :5] = 1.0     # half the slice
    volume[3, :1, :2] = 1.0  # 2 % of the slice
    volume[4] = 1.0
    np.savez(tmp_path / "v.npz", image=volume)
    assert len(pool(registry, tmp_path, intensity={"mode": "none"}).slice_dataset(16)) == 5
    kept = pool(registry, tmp_path, intensity={"mode": "none"}, min_foreground_fraction=0.1).slice_dataset(16)
    assert kept.index == [("v", 1), ("v", 4)]


def test_slice_dataset_batches_like_slice_dataset_in_the_training_loop(registry, tmp_path):
    np.savez(tmp_path / "v.npz", image=ramp_volume(6))
    slices = pool(registry, tmp_path, cache_mb=0).slice_dataset(32)  # nothing cached: read on every item
    slices.set_epoch(3)
    batch = next(iter(DataLoader(slices, batch_sampler=[[0, 5, 2]])))
    assert batch.shape == (3, 3, 32, 32) and batch.dtype == torch.float32
    assert 0.0 <= batch.min() and batch.max() <= 1.0
