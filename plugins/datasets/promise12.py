"""PROMISE12 prostate MRI, the challenge's MetaImage files in one flat folder:

    <root>/CaseXX.mhd (+ CaseXX.raw)                    T2 image
    <root>/CaseXX_segmentation.mhd (+ .raw)             prostate mask, 0/1

Slices are cut along the MetaImage z axis (a Volume is z,y,x); spacing comes from ElementSpacing.
Intensities: per-volume percentile normalisation (mode "mr").

Default splits follow H-SAM's 3-scan setting: train Case05, Case14, Case29 (lists/promise12_train.list),
test Case12, 13, 16, 20, 23, 28, 34, 35, 43, 49 (lists/promise12_test.list).
`samora-kit data convert promise12 SRC DST` (convert.py) flattens the challenge's TrainingData_Part1..3 folders.

MetaImage is read by the small reader below (uncompressed or zlib-compressed data, one data file or LOCAL),
so no SimpleITK dependency is needed.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np
from pydantic import Field

from samora_kit.api import CaseSelection, DataError, IntensityConfig, Volume, did_you_mean, normalise

from .common import DatasetConfig, SplitCases, check_num_classes, check_same_shape, checked_label, existing_dir

NAME = "promise12"
CLASS_NAMES = ["prostate"]
CASE_IMAGE = re.compile(r"^(?P<case>Case\d+)\.mhd$")
LABEL_SUFFIX = "_segmentation.mhd"
LISTS_DIR = Path(__file__).resolve().parent / "lists"
TRAIN_LIST = LISTS_DIR / "promise12_train.list"
TEST_LIST = LISTS_DIR / "promise12_test.list"
EXAMPLE = {"root": "data/PROMISE12"}


class Promise12Config(DatasetConfig):
    train: CaseSelection | None = None  # None: Case05, Case14, Case29 (H-SAM's 3 labelled scans)
    test: CaseSelection | None = None   # None: H-SAM's 10 test cases
    intensity: IntensityConfig = Field(default_factory=lambda: IntensityConfig(mode="mr"))


class Promise12Dataset(SplitCases):
    """PROMISE12 training cases that have a segmentation; case ids are `CaseXX`."""

    def __init__(self, config: Promise12Config):
        self.config = config
        self.root = existing_dir(config.root, "a folder of CaseXX.mhd / CaseXX_segmentation.mhd files")
        self.num_classes = check_num_classes(config.num_classes, len(CLASS_NAMES), str(self.root))
        self.class_names = list(CLASS_NAMES)
        self.pairs = case_pairs(self.root)  # case -> (image .mhd, segmentation .mhd)
        train = config.train or CaseSelection(list_file=TRAIN_LIST)
        test = config.test or CaseSelection(list_file=TEST_LIST)
        super().__init__({"train": train.resolve(self.pairs, self.root),
                          "test": test.resolve(self.pairs, self.root)})

    def load_case(self, case_id: str) -> Volume:
        if case_id not in self.pairs:
            raise DataError(f"{self.root}: no case {case_id!r}{did_you_mean(case_id, self.pairs)}")
        image_path, label_path = self.pairs[case_id]
        image, spacing, header = read_metaimage(image_path)
        label, label_spacing, _ = read_metaimage(label_path)
        check_same_shape(image, label, str(image_path), str(label_path))
        if not np.allclose(spacing, label_spacing, rtol=1e-3):
            raise DataError(f"{label_path}: spacing {label_spacing} differs from the image's {spacing} "
                            f"({image_path})")
        return Volume(case_id=case_id,
                      image=normalise(image.astype(np.float32), self.config.intensity, "MRI", str(image_path)),
                      label=checked_label(label, self.num_classes, str(label_path)),
                      spacing=spacing, source=str(image_path),
                      meta={"label_source": str(label_path), "slice_axis": "z (MetaImage)", "spacing_known": True,
                            "transform_matrix": header.get("TransformMatrix", "")})


def build_promise12(config: Promise12Config) -> Promise12Dataset:
    """PROMISE12 prostate MRI, challenge MetaImage files (1 class)."""
    return Promise12Dataset(config)


def case_pairs(folder: Path) -> dict[str, tuple[Path, Path]]:
    """CaseXX -> (CaseXX.mhd, CaseXX_segmentation.mhd) for every image with a segmentation, sorted by id."""
    pairs = {}
    for path in sorted(folder.glob("*.mhd")):
        match = CASE_IMAGE.match(path.name)
        if match and (folder / f"{match['case']}{LABEL_SUFFIX}").is_file():
            pairs[match["case"]] = (path, folder / f"{match['case']}{LABEL_SUFFIX}")
    if not pairs:
        raise DataError(f"{folder}: no CaseXX.mhd with a matching CaseXX{LABEL_SUFFIX}; expected the PROMISE12 "
                        "training files in one folder (samora-kit data convert promise12 SRC DST makes one)")
    return pairs


# ---- MetaImage (.mhd + .raw) --------------------------------------------------------------------

ELEMENT_TYPES = {"MET_UCHAR": "u1", "MET_CHAR": "i1", "MET_USHORT": "u2", "MET_SHORT": "i2",
                 "MET_UINT": "u4", "MET_INT": "i4", "MET_ULONG": "u4", "MET_LONG": "i4",
                 "MET_ULONG_LONG": "u8", "MET_LONG_LONG": "i8", "MET_FLOAT": "f4", "MET_DOUBLE": "f8"}


def read_mhd_header(path: Path) -> dict[str, str]:
    """The `Key = Value` fields of a MetaImage header, up to and including ElementDataFile."""
    if not path.is_file():
        raise DataError(f"{path}: no such MetaImage header")
    header: dict[str, str] = {}
    try:
        with open(path, "rb") as fh:
            for raw in fh:
                line = raw.decode("latin-1").strip()
                if not line:
                    continue
                key, sep, value = line.partition("=")
                if not sep:
                    raise DataError(f"{path}: not a MetaImage header (line {line[:60]!r} has no '=')")
                header[key.strip()] = value.strip()
                if key.strip() == "ElementDataFile":
                    header["_data_offset"] = str(fh.tell())
                    break
    except OSError as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None
    for key in ("NDims", "DimSize", "ElementType", "ElementDataFile"):
        if key not in header:
            raise DataError(f"{path}: MetaImage header lacks {key!r}")
    return header


def metaimage_data_file(path: Path, header: dict[str, str]) -> Path:
    """Where the voxels are: the header itself for LOCAL, else ElementDataFile relative to the header."""
    name = header["ElementDataFile"]
    if name == "LOCAL":
        return path
    if name.startswith("LIST") or "%" in name or " " in name.strip():
        raise DataError(f"{path}: ElementDataFile {name!r} (several data files) is not supported")
    data = Path(name)
    return data if data.is_absolute() else path.parent / data


def _shape_and_dtype(path: Path, header: dict[str, str]) -> tuple[tuple[int, ...], np.dtype]:
    try:
        dims = tuple(int(v) for v in header["DimSize"].split())
    except ValueError:
        raise DataError(f"{path}: DimSize {header['DimSize']!r} is not a list of integers") from None
    if len(dims) != 3 or int(header["NDims"]) != 3:
        raise DataError(f"{path}: expected a 3D MetaImage, got NDims {header['NDims']} DimSize {dims}")
    if int(header.get("ElementNumberOfChannels", "1")) != 1:
        raise DataError(f"{path}: {header['ElementNumberOfChannels']} channels; only single-channel images")
    kind = ELEMENT_TYPES.get(header["ElementType"])
    if kind is None:
        raise DataError(f"{path}: ElementType {header['ElementType']!r} unsupported; "
                        f"expected one of {', '.join(ELEMENT_TYPES)}")
    msb = (header.get("ElementByteOrderMSB") or header.get("BinaryDataByteOrderMSB") or "False").lower() == "true"
    return dims, np.dtype(kind).newbyteorder(">" if msb else "<")


def check_metaimage(path: Path) -> tuple[int, ...]:
    """The x,y,z DimSize after checking the header and the data file's presence and size (no voxels read)."""
    header = read_mhd_header(path)
    dims, dtype = _shape_and_dtype(path, header)
    data = metaimage_data_file(path, header)
    if not data.is_file():
        raise DataError(f"{data}: no such file; {path.name} names it as its ElementDataFile")
    if header.get("CompressedData", "False").lower() != "true" and data != path:
        expected = int(np.prod(dims)) * dtype.itemsize
        size = data.stat().st_size
        if size < expected:
            raise DataError(f"{data}: {size} bytes, but {path.name} declares {dims} {header['ElementType']} "
                            f"voxels ({expected} bytes); truncated?")
    return dims


def read_metaimage(path: Path) -> tuple[np.ndarray, tuple[float, float, float], dict[str, str]]:
    """(array z,y,x, spacing (z,y,x) in mm, header) of a 3D MetaImage."""
    header = read_mhd_header(path)
    dims, dtype = _shape_and_dtype(path, header)
    data_path = metaimage_data_file(path, header)
    count = int(np.prod(dims))
    try:
        with open(data_path, "rb") as fh:
            if data_path == path:
                fh.seek(int(header["_data_offset"]))
            payload = fh.read()
    except OSError as exc:
        raise DataError(f"{data_path}: cannot read the voxels of {path.name} ({exc})") from None
    if header.get("CompressedData", "False").lower() == "true":
        try:
            payload = zlib.decompress(payload)
        except zlib.error as exc:
            raise DataError(f"{data_path}: corrupt compressed data ({exc})") from None
    else:
        skip = int(header.get("HeaderSize", "0"))
        expected = count * dtype.itemsize
        if skip == -1:  # the voxels are the last bytes of the file
            skip = len(payload) - expected
        payload = payload[max(skip, 0):]
    if len(payload) < count * dtype.itemsize:
        raise DataError(f"{data_path}: {len(payload)} bytes of voxels, but {path.name} declares {dims} "
                        f"{header['ElementType']} ({count * dtype.itemsize} bytes); truncated?")
    array = np.frombuffer(payload, dtype=dtype, count=count).reshape(dims[::-1])  # x varies fastest
    spacing_field = header.get("ElementSpacing") or header.get("ElementSize") or "1 1 1"
    try:
        spacing = tuple(float(v) for v in spacing_field.split())
    except ValueError:
        raise DataError(f"{path}: ElementSpacing {spacing_field!r} is not a list of numbers") from None
    if len(spacing) != 3 or min(spacing) <= 0:
        raise DataError(f"{path}: ElementSpacing {spacing_field!r} must be three positive numbers")
    return array.astype(array.dtype.newbyteorder("=")), (spacing[2], spacing[1], spacing[0]), header


def write_metaimage(path: Path, array: np.ndarray, spacing_xyz: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Path:
    """Write a z,y,x array as `path` (.mhd) + the .raw beside it; used by tests and tools."""
    types = {np.dtype(v).newbyteorder("<"): k for k, v in ELEMENT_TYPES.items() if k not in ("MET_ULONG", "MET_LONG")}
    data = np.ascontiguousarray(array, dtype=np.dtype(array.dtype).newbyteorder("<"))
    if data.dtype not in types or data.ndim != 3:
        raise DataError(f"{path}: cannot write a {array.ndim}D {array.dtype} array as MetaImage")
    raw = path.with_suffix(".raw")
    raw.write_bytes(data.tobytes())
    z, y, x = data.shape
    path.write_text("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
                    "CompressedData = False\nTransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 0 0 0\n"
                    f"ElementSpacing = {' '.join(f'{s:g}' for s in spacing_xyz)}\nDimSize = {x} {y} {z}\n"
                    f"ElementType = {types[data.dtype]}\nElementDataFile = {raw.name}\n")
    return path
