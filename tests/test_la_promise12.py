"""LA (UA-MT mri_norm2.h5) and PROMISE12 (MetaImage) adapters, their shipped splits and their `samora-kit data convert` converters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from samora_kit.convert import convert
from samora_kit.plugins import default_registry
from samora_kit.errors import DataError
from samora_kit_plugins.datasets import la
from samora_kit_plugins.datasets.promise12 import read_metaimage, write_metaimage

from .synthetic import LA_HWD, P12_SPACING_XYZ, la_arrays, p12_arrays, write_la_case, write_p12_case

LA_TRAIN = la.read_list(la.TRAIN_LIST)
LA_TEST = la.read_list(la.TEST_LIST)
P12_TRAIN = ["Case05", "Case14", "Case29"]
P12_TEST = ["Case12", "Case13", "Case16", "Case20", "Case23", "Case28", "Case34", "Case35", "Case43", "Case49"]


@pytest.fixture(scope="module")
def registry(dataset_registry):
    return dataset_registry


def build(registry, name: str, config: dict):
    return registry.get("dataset", name).build(config)


# ---- synthetic layouts --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def la_download(tmp_path_factory) -> Path:
    """UA-MT's layout: data/2018LA_Seg_Training Set/<case>/mri_norm2.h5 for all 100 listed cases."""
    data = tmp_path_factory.mktemp("uamt") / "data"
    cases = data / "2018LA_Seg_Training Set"
    for n, case in enumerate([*LA_TRAIN, *LA_TEST]):
        write_la_case(cases, case, seed=n)
    (data / "train.list").write_text("\n".join(LA_TRAIN) + "\n")
    (data / "test.list").write_text("\n".join(LA_TEST) + "\n")
    return data


@pytest.fixture()
def p12_download(tmp_path) -> Path:
    """The challenge's training download: TrainingData_Part1..3 with Case00..Case49 spread over them."""
    src = tmp_path / "promise12_download"
    for n in range(50):
        write_p12_case(src / f"TrainingData_Part{n // 17 + 1}", f"Case{n:02d}", seed=n)
    return src


# ---- LA -----------------------------------------------------------------------------------------

def test_shipped_la_lists_are_uamt_splits():
    assert len(LA_TRAIN) == 80 and len(LA_TEST) == 20 and not set(LA_TRAIN) & set(LA_TEST)
    assert LA_TRAIN[:4] == ["06SR5RBREL16DQ6M8LWS", "0RZDK210BSMWAA6467LU", "1D7CUD1955YZPGK8XHJX",
                            "1GU15S0GJ6PFNARO469W"]
    assert LA_TEST[0] == "UPT6DX9IQY9JAZ7HJKA7" and LA_TEST[-1] == "ZQPMJ4XEC5A4BISD45P1"


def test_registered(registry):
    for name in ("la", "promise12"):
        spec = registry.get("dataset", name)
        spec.config_model.model_validate(spec.example)  # the example is a valid config
        assert spec.summary


def test_la_reads_uamt_layout_with_default_splits(registry, la_download):
    data = build(registry, "la", {"root": str(la_download / "2018LA_Seg_Training Set")})
    assert data.num_classes == 1 and data.class_names == ["left atrium"]
    assert data.cases("train") == LA_TRAIN[:4]
    assert data.cases("test") == LA_TEST
    volume = data.load_case(LA_TRAIN[1])
    image, label = la_arrays(1)
    assert volume.image.shape == (3, 6, 5) and volume.label.shape == (3, 6, 5)   # D, H, W
    np.testing.assert_array_equal(volume.label, np.moveaxis(label, 2, 0).astype(np.int64))
    assert volume.label.dtype == np.int64
    assert volume.image.dtype == np.float32 and 0.0 <= volume.image.min() and volume.image.max() <= 1.0
    # percentile normalisation keeps the voxel order of the z-scored input
    assert np.corrcoef(volume.image.ravel(), np.moveaxis(image, 2, 0).ravel())[0, 1] > 0.9
    assert volume.spacing == (1.0, 1.0, 1.0) and volume.meta["spacing_known"] is False


def test_la_count_seed_selection_and_voxel_size(registry, la_download):
    root = la_download / "2018LA_Seg_Training Set"
    config = {"root": str(root), "voxel_size_mm": 0.625,
              "train": {"list_file": str(la.TRAIN_LIST), "count": 8, "seed": 7}}
    data = build(registry, "la", config)
    train = data.cases("train")
    assert len(train) == 8 and set(train) <= set(LA_TRAIN)
    assert build(registry, "la", config).cases("train") == train    # seeded: reproducible
    assert data.load_case(LA_TEST[0]).spacing == (0.625, 0.625, 0.625)


def test_la_errors_name_the_problem(registry, tmp_path):
    root = tmp_path / "la"
    write_la_case(root, "CASEA", label=np.full(LA_HWD, 2, np.uint8))
    write_la_case(root, "CASEB", label=None)
    write_la_case(root, "CASEC", label=np.zeros((6, 5, 4), np.uint8))
    data = build(registry, "la", {"root": str(root), "train": {"cases": ["CASEA"]}, "test": {"cases": ["CASEB"]}})
    with pytest.raises(DataError, match=r"CASEA.*outside 0\.\.1"):
        data.load_case("CASEA")
    with pytest.raises(DataError, match=r"CASEB.*missing dataset.*label"):
        data.load_case("CASEB")
    with pytest.raises(DataError, match=r"CASEC.*shape"):
        data.load_case("CASEC")
    with pytest.raises(DataError, match="unknown case id '1GU15S0GJ6PFNARO469W'|unknown case id"):
        build(registry, "la", {"root": str(root)})            # default splits need the UA-MT ids
    with pytest.raises(DataError, match="no <case>/mri_norm2.h5"):
        build(registry, "la", {"root": str(tmp_path), "train": {"cases": []}, "test": {"cases": []}})


def test_convert_la(registry, la_download, tmp_path):
    dst = convert("la", la_download, tmp_path / "LA")
    assert (dst / "la_test.list").read_text().split() == LA_TEST
    assert (dst / "la_train_4.list").read_text().split() == LA_TRAIN[:4]
    data = build(registry, "la", {"root": str(dst), "train": {"list_file": "la_train_4.list"},
                                  "test": {"list_file": "la_test.list"}})
    assert data.cases("train") == LA_TRAIN[:4] and len(data.cases("test")) == 20
    assert data.load_case(LA_TEST[3]).image.shape == (3, 6, 5)
    assert convert("la", la_download / "2018LA_Seg_Training Set", tmp_path / "LA") == dst   # rerun: no-op


def test_convert_la_names_missing_cases(la_download, tmp_path):
    src = tmp_path / "partial"
    for case in LA_TRAIN[:3]:
        write_la_case(src, case)
    with pytest.raises(DataError, match=r"97 of the 100 LA cases.*" + LA_TRAIN[3]):
        convert("la", src, tmp_path / "out")
    with pytest.raises(DataError, match="no <case>/mri_norm2.h5"):
        convert("la", tmp_path / "partial" / LA_TRAIN[0], tmp_path / "out")
    with pytest.raises(DataError, match="unknown conversion 'acdc'"):
        convert("acdc", src, tmp_path / "out")
    assert default_registry().names("converter") == ["la", "promise12"]  # plugins, listed by `samora-kit plugins`


# ---- PROMISE12 ----------------------------------------------------------------------------------

def test_metaimage_round_trip(tmp_path):
    image, _ = p12_arrays(3)
    path = write_metaimage(tmp_path / "Case00.mhd", image, P12_SPACING_XYZ)
    array, spacing, header = read_metaimage(path)
    np.testing.assert_array_equal(array, image)
    assert spacing == (3.6, 0.5, 0.625) and header["ElementType"] == "MET_SHORT"


def test_metaimage_matches_simpleitk(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    image, _ = p12_arrays(4)
    written = sitk.GetImageFromArray(image)
    written.SetSpacing(P12_SPACING_XYZ)
    sitk.WriteImage(written, str(tmp_path / "a.mhd"))
    array, spacing, _ = read_metaimage(tmp_path / "a.mhd")
    np.testing.assert_array_equal(array, image)
    assert spacing == (3.6, 0.5, 0.625)
    write_metaimage(tmp_path / "b.mhd", image, P12_SPACING_XYZ)
    back = sitk.ReadImage(str(tmp_path / "b.mhd"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), image)
    assert back.GetSpacing() == pytest.approx(P12_SPACING_XYZ)


def test_convert_promise12_and_read(registry, p12_download, tmp_path):
    dst = convert("promise12", p12_download, tmp_path / "PROMISE12")
    assert (dst / "Case05.raw").is_file() and (dst / "Case49_segmentation.raw").is_file()
    assert (dst / "promise12_test.list").read_text().split() == P12_TEST
    data = build(registry, "promise12", {"root": str(dst)})
    assert data.num_classes == 1 and data.class_names == ["prostate"]
    assert data.cases("train") == P12_TRAIN and data.cases("test") == P12_TEST
    volume = data.load_case("Case14")
    image, label = p12_arrays(14)
    assert volume.image.shape == (4, 7, 6)                              # z, y, x
    np.testing.assert_array_equal(volume.label, label.astype(np.int64))
    assert volume.spacing == (3.6, 0.5, 0.625)                          # (z, y, x) mm from ElementSpacing
    assert 0.0 <= volume.image.min() and volume.image.max() <= 1.0
    subset = build(registry, "promise12", {"root": str(dst), "train": {"cases": [f"Case{n:02d}" for n in range(50)],
                                                                       "count": 5, "seed": 1}})
    assert len(subset.cases("train")) == 5


def test_convert_promise12_names_missing_files(p12_download, tmp_path):
    (p12_download / "TrainingData_Part1" / "Case13_segmentation.mhd").unlink()
    with pytest.raises(DataError, match=r"missing PROMISE12 training case\(s\) Case13"):
        convert("promise12", p12_download, tmp_path / "out")
    write_p12_case(p12_download / "TrainingData_Part1", "Case13")
    (p12_download / "TrainingData_Part2" / "Case20.raw").unlink()
    with pytest.raises(DataError, match=r"Case20\.raw: no such file; Case20\.mhd names it"):
        convert("promise12", p12_download, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no CaseXX.mhd"):
        convert("promise12", tmp_path / "empty", tmp_path / "out2")


def test_promise12_errors(registry, tmp_path):
    root = tmp_path / "p12"
    root.mkdir()
    image, _ = p12_arrays(0)
    write_metaimage(root / "Case01.mhd", image, P12_SPACING_XYZ)
    write_metaimage(root / "Case01_segmentation.mhd", np.full(image.shape, 3, np.uint8), P12_SPACING_XYZ)
    write_metaimage(root / "Case02.mhd", image, P12_SPACING_XYZ)
    write_metaimage(root / "Case02_segmentation.mhd", np.zeros((4, 7, 5), np.uint8), P12_SPACING_XYZ)
    write_metaimage(root / "Case03.mhd", image, P12_SPACING_XYZ)
    write_metaimage(root / "Case03_segmentation.mhd", np.zeros(image.shape, np.uint8), P12_SPACING_XYZ)
    (root / "Case03.raw").write_bytes(b"\0" * 10)
    data = build(registry, "promise12", {"root": str(root), "train": {"cases": ["Case01"]},
                                         "test": {"cases": ["Case02", "Case03"]}})
    with pytest.raises(DataError, match=r"Case01_segmentation.mhd.*outside 0\.\.1"):
        data.load_case("Case01")
    with pytest.raises(DataError, match=r"shape"):
        data.load_case("Case02")
    with pytest.raises(DataError, match=r"Case03.raw.*truncated"):
        data.load_case("Case03")
    with pytest.raises(DataError, match="unknown case id 'Case05'"):
        build(registry, "promise12", {"root": str(root)})
