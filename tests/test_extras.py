"""sam2, nilearn and pydicom are optional extras: without one, its plugins still load and register,
and building a component that needs it says which `pip install` brings it."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from samora_kit.errors import DataError, SamoraError
from samora_kit.extras import EXTRAS

REPO = Path(__file__).resolve().parents[1]
SAM2_HINT = "pip install 'samora-kit[sam2]' (sam2 is a source package: install torch first, then build it with " \
            "SAM2_BUILD_CUDA=0 pip install --no-build-isolation 'sam2>=1.1')"


def without(monkeypatch, package: str) -> None:
    """As if `package` were not installed: its imports fail, submodules already imported included."""
    for name in [n for n in sys.modules if n == package or n.startswith(f"{package}.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, package, None)


def test_every_extra_is_declared_and_in_all():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for package, extra in EXTRAS.items():
        assert any(req.startswith(package) for req in extras[extra]), (package, extra)
        assert any(req.startswith(package) for req in extras["all"]), package
        assert not any(req.startswith(package) for req in dependencies), f"{package} is a core dependency"


def test_without_sam2_the_sam2_plugins_load_and_register():
    script = ("import sys; sys.modules['sam2'] = None\n"  # no sam2 module imported yet in a fresh interpreter
              "from samora_kit.cli import main\n"
              "sys.exit(main(['plugins', '--json']))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr
    listing = json.loads(done.stdout)
    assert not [f for f in listing.get("_failed", []) if f["plugin"] in ("sam2", "samed2")], listing["_failed"]
    assert "sam2" in listing["backbone"] and "sam2" in listing["importer"] and "samed2" in listing["decoder"]


def test_building_the_sam2_backbone_without_sam2_names_the_extra(monkeypatch):
    from samora_kit.plugins import default_registry

    spec = default_registry().get("backbone", "sam2")
    without(monkeypatch, "sam2")
    with pytest.raises(SamoraError) as raised:
        spec.build({"variant": "tiny", "image_size": 64})
    assert str(raised.value) == f"SAM2's Hiera image encoder needs the sam2 package, which is not installed: {SAM2_HINT}"


def test_a_packaged_sam2_variant_without_sam2_names_the_extra(monkeypatch):
    from samora_kit_plugins.sam2 import Sam2BackboneConfig

    without(monkeypatch, "sam2")
    with pytest.raises(SamoraError, match=r"the sam2 backbone's variant 'b\+' needs the sam2 package") as raised:
        Sam2BackboneConfig(variant="b+")
    assert SAM2_HINT in str(raised.value)


def test_the_samed2_decoder_and_the_hiera_experts_without_sam2_name_the_extra(monkeypatch):
    import samora_kit_plugins.sam2 as sam2_plugin
    from samora_kit_plugins.decoders.samed2 import Samed2Decoder

    without(monkeypatch, "sam2")
    with pytest.raises(SamoraError, match="the samed2 decoder needs the sam2 package") as raised:
        Samed2Decoder(num_classes=2, channels=32, grid=4, image_size=64)
    assert SAM2_HINT in str(raised.value)
    with pytest.raises(SamoraError, match=r"install_hiera_experts needs the sam2 package.*samora-kit\[sam2\]"):
        sam2_plugin.install_hiera_experts  # the attribute access imports sam2


def test_the_mni152_demo_without_nilearn_names_the_demo_extra(monkeypatch):
    from samora_kit_plugins.datasets.mni152_demo import nilearn_data_dir

    without(monkeypatch, "nilearn")
    with pytest.raises(DataError) as raised:
        nilearn_data_dir()
    assert str(raised.value) == ("the mni152_demo dataset (the MNI152 template shipped inside nilearn) needs the "
                                 "nilearn package, which is not installed: pip install 'samora-kit[demo]' "
                                 "(or pip install nilearn)")


def test_dicom_without_pydicom_names_the_dicom_extra(monkeypatch, tmp_path):
    from samora_kit_plugins.datasets.unlabelled_pool import _read_dicom

    without(monkeypatch, "pydicom")
    with pytest.raises(DataError) as raised:
        _read_dicom(tmp_path / "scan.dcm")
    assert str(raised.value) == (f"{tmp_path / 'scan.dcm'}: reading DICOM needs the pydicom package, which is not "
                                 "installed: pip install 'samora-kit[dicom]' (or pip install pydicom); "
                                 "or leave 'dcm' out of formats")
