"""`samora-kit data convert la|promise12`: a public download -> the folder the `la` / `promise12`
adapter reads (registered as converters; `samora_kit.convert.convert` checks the folders and dispatches).

    la         UA-MT's LA download -> dst/<case>/mri_norm2.h5 + the split lists
    promise12  PROMISE12 TrainingData_Part1..3 -> flat dst/CaseXX[.mhd|.raw|_segmentation.*] + the split lists

Each checks the source first and raises DataError naming what is missing; files are written atomically
(a half-copied file never carries the final name), so an interrupted run can simply be repeated.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from samora_kit.api import ComponentConfig, DataError, atomic_write, atomic_write_text

from . import la
from . import promise12 as p12

LA_CASE_DIR = "2018LA_Seg_Training Set"  # UA-MT: data/2018LA_Seg_Training Set/<case>/mri_norm2.h5
PROMISE12_PARTS = ("TrainingData_Part1", "TrainingData_Part2", "TrainingData_Part3")


class ConvertConfig(ComponentConfig):
    """The conversions take no options."""


# ---- LA (UA-MT) -----------------------------------------------------------------------------------

def convert_la(config, *, src: Path, dst: Path) -> Path:
    """Check every case of UA-MT's train.list + test.list and copy its mri_norm2.h5 into dst/<case>/.

    src is UA-MT's `data/` folder (holding '2018LA_Seg_Training Set') or that case folder itself."""
    cases_dir = _la_cases_dir(src)
    train, test = la.read_list(la.TRAIN_LIST), la.read_list(la.TEST_LIST)
    sources = {case: cases_dir / case / la.CASE_FILE for case in [*train, *test]}
    missing = [case for case, path in sources.items() if not path.is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(f"{cases_dir}: {len(missing)} of the {len(sources)} LA cases of UA-MT's train.list/test.list "
                        f"lack <case>/{la.CASE_FILE}: {shown}")
    for path in sources.values():
        la.check_la_h5(path)  # datasets image + label, 3D, same shape
    for case, path in sources.items():
        _copy(path, dst / case / la.CASE_FILE)
    _write_list(dst / "la_train.list", train)
    _write_list(dst / "la_test.list", test)
    _write_list(dst / f"la_train_{la.DEFAULT_LABELLED}.list", train[: la.DEFAULT_LABELLED])
    return dst


def _la_cases_dir(src: Path) -> Path:
    for candidate in (src / LA_CASE_DIR, src / "data" / LA_CASE_DIR, src):
        if candidate.is_dir() and any(candidate.glob(f"*/{la.CASE_FILE}")):
            return candidate
    raise DataError(f"{src}: no <case>/{la.CASE_FILE} files here nor in '{LA_CASE_DIR}/'; expected UA-MT's "
                    f"LA download (data/{LA_CASE_DIR}/<case>/{la.CASE_FILE})")


# ---- PROMISE12 ------------------------------------------------------------------------------------

def convert_promise12(config, *, src: Path, dst: Path) -> Path:
    """Collect every CaseXX.mhd with a CaseXX_segmentation.mhd (and their data files) into flat dst.

    src holds TrainingData_Part1..3 (or the case files directly); H-SAM's 13 split cases are required."""
    found = _promise12_cases(src)
    required = [*la.read_list(p12.TRAIN_LIST), *la.read_list(p12.TEST_LIST)]
    missing = [case for case in required if case not in found]
    if missing:
        folders = ", ".join(PROMISE12_PARTS)
        raise DataError(f"{src}: missing PROMISE12 training case(s) {', '.join(missing)} "
                        f"(need CaseXX.mhd + CaseXX.raw + CaseXX_segmentation.mhd/.raw, directly or in {folders})")
    plan: list[tuple[Path, Path]] = []
    for case, (image, label) in sorted(found.items()):
        image_dims, label_dims = p12.check_metaimage(image), p12.check_metaimage(label)
        if image_dims != label_dims:
            raise DataError(f"{label}: DimSize {label_dims} differs from the image's {image_dims} ({image})")
        for header in (image, label):
            plan.append((header, dst / header.name))
            data = p12.metaimage_data_file(header, p12.read_mhd_header(header))
            if data != header:
                if data.parent != header.parent:
                    raise DataError(f"{header}: its data file {data} is not beside it; copy it there first")
                plan.append((data, dst / data.name))
    for source, target in plan:
        _copy(source, target)
    _write_list(dst / "promise12_train.list", la.read_list(p12.TRAIN_LIST))
    _write_list(dst / "promise12_test.list", la.read_list(p12.TEST_LIST))
    return dst


def _promise12_cases(src: Path) -> dict[str, tuple[Path, Path]]:
    folders = [src / part for part in PROMISE12_PARTS if (src / part).is_dir()] or [src]
    folders += [f for f in sorted(src.glob("TrainingData*")) if f.is_dir() and f not in folders]
    found: dict[str, tuple[Path, Path]] = {}
    for folder in folders:
        for image in sorted(folder.glob("*.mhd")):
            match = p12.CASE_IMAGE.match(image.name)
            label = folder / f"{match['case']}{p12.LABEL_SUFFIX}" if match else None
            if match and label.is_file():
                if match["case"] in found:
                    raise DataError(f"{image}: case {match['case']} also in {found[match['case']][0].parent}")
                found[match["case"]] = (image, label)
    if not found:
        raise DataError(f"{src}: no CaseXX.mhd with CaseXX{p12.LABEL_SUFFIX} here nor in "
                        f"{', '.join(PROMISE12_PARTS)}; expected the PROMISE12 training download")
    return found


# ---- shared -------------------------------------------------------------------------------------

def _copy(source: Path, target: Path) -> None:
    if target.is_file() and target.stat().st_size == source.stat().st_size \
            and target.stat().st_mtime >= source.stat().st_mtime:
        return  # already copied by an earlier (possibly interrupted) run
    atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))


def _write_list(path: Path, ids: list[str]) -> None:
    atomic_write_text(path, "".join(f"{case}\n" for case in ids))


def register(registry) -> None:
    registry.add("converter", "la", ConvertConfig, convert_la)
    registry.add("converter", "promise12", ConvertConfig, convert_promise12)
