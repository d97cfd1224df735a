"""One real run on MSD hippocampus MRI (tiny SAM, one labelled volume), then everything a user
does with the run folder: read its reports, re-evaluate, predict on new NIfTI, reload weights.

Skips cleanly when ../shared/data/msd_hippocampus is absent.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import tomllib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from rich.console import Console

from samora_kit.cli import main
from samora_kit.errors import CheckpointError
from samora_kit.flows.segment import load_run
from samora_kit.runner import run
from samora_kit.weights.io import load_weights

from .conftest import shared_dataset

pytestmark = pytest.mark.slow

POLICIES = ("transunet", "strict")
CLASSES = ("Anterior", "Posterior")
N_TEST = 4
EPOCHS = 16
# One volume (hippocampus_368, 40 axial slices), 31 of them with a label (foreground_only):
# 7 steps of 4 per epoch. Seeds 1-4 and 7 reach mean Dice 0.26-0.38 after these 112 steps; an
# empty prediction scores 0, and one painted all over the volume about 0.05.
RECIPE = """
task = "segment"

[run]
name = "e2e-hippocampus"
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
root = "{root}"
train = {{ split_file = "{root}/split.json", key = "support_sets.k1.0" }}
test = {{ split_file = "{root}/split.json", key = "test", count = {n_test} }}

[train]
epochs = {epochs}
batch_size = 4
lr = 0.005
warmup = 4
foreground_only = true
checkpoint_every = 50
log_every = 10

[eval]
overlays = 2
"""
DICE_BAR = 0.2


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = shared_dataset("msd_hippocampus")  # module scope: skips like the `hippocampus` fixture
    work = tmp_path_factory.mktemp("e2e")
    recipe = work / "recipe.toml"
    recipe.write_text(RECIPE.format(run_dir=work / "run", root=root, n_test=N_TEST, epochs=EPOCHS))
    return run(recipe, [], False, ["samora-kit", "run", str(recipe)], console=Console(quiet=True),
               show_progress=False)


def _steps(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_run_folder_holds_recipe_environment_logs_and_weights(trained):
    resolved = tomllib.loads((trained / "recipe.resolved.toml").read_text())
    assert resolved["train"]["epochs"] == EPOCHS and resolved["train"]["weight_decay"] == 0.1
    assert resolved["data"]["train"] == {"split_file": str(shared_dataset("msd_hippocampus") / "split.json"),
                                         "key": "support_sets.k1.0", "seed": 1234}

    env = json.loads((trained / "env.json").read_text())
    assert env["torch"] == torch.__version__
    assert env["device"] == "cpu"
    assert "git_sha" in env
    assert env["plugins"]["sam"].startswith("samora-kit")
    assert (trained / "cmdline.txt").read_text().startswith("samora-kit run ")

    steps = _steps(trained)  # the first step, then every log_every = 10 steps, then the last: interval means
    assert [s["step"] for s in steps] == [1, *range(10, 7 * EPOCHS + 1, 10), 7 * EPOCHS]
    assert all(np.isfinite(s["loss"]) for s in steps)
    assert np.mean([s["loss"] for s in steps[-3:]]) < np.mean([s["loss"] for s in steps[:3]])
    assert any(p.name.startswith("events.out.tfevents") for p in (trained / "tensorboard").iterdir())

    _, state_header = load_weights(trained / "checkpoints" / "last.safetensors")
    assert state_header["step"] == 7 * EPOCHS
    weights, header = load_weights(trained / "weights.safetensors")
    assert header["kind"] == "model-weights" and header["backbone"] == "sam" and header["decoder"] == "samed"
    assert any(".lora_a." in name for name in weights)


def test_evaluation_reports_both_policies_per_case_and_class(trained):
    with open(trained / "eval" / "per_case.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    cases = sorted({r["case"] for r in rows})
    assert len(cases) == N_TEST and all(c.startswith("hippocampus_") for c in cases)
    assert len(rows) == N_TEST * len(CLASSES) * len(POLICIES)
    assert sorted((r["case"], r["class"], r["policy"]) for r in rows) == \
        sorted((c, k, p) for c in cases for k in CLASSES for p in POLICIES)
    assert {r["status"] for r in rows} <= {"ok", "miss", "false_positive", "both_empty"}

    summary = json.loads((trained / "eval" / "summary.json").read_text())
    assert tuple(summary) == POLICIES
    descriptions = [summary[p]["policy_description"] for p in POLICIES]
    assert all(len(d) > 40 for d in descriptions) and descriptions[0] != descriptions[1]
    for policy in POLICIES:
        assert summary[policy]["policy"] == policy and summary[policy]["n_cases"] == N_TEST
        assert set(summary[policy]["classes"]) == set(CLASSES)
    overlays = sorted((trained / "eval" / "overlays").glob("*.png"))
    assert len(overlays) == 2 and all(p.read_bytes().startswith(b"\x89PNG") for p in overlays)


def test_training_beats_chance(trained):
    summary = json.loads((trained / "eval" / "summary.json").read_text())
    dice = summary["transunet"]["mean"]["dice"]
    assert dice > DICE_BAR, f"mean Dice {dice:.3f} after {7 * EPOCHS} steps"


def test_evaluate_command_reproduces_the_summary(trained, tmp_path, capsys):
    again = tmp_path / "again"
    assert main(["evaluate", str(trained), "--output", str(again)]) == 0, capsys.readouterr().err
    assert (again / "summary.json").read_text() == (trained / "eval" / "summary.json").read_text()
    assert (again / "per_case.csv").read_text() == (trained / "eval" / "per_case.csv").read_text()


def _oblique_affine() -> np.ndarray:
    """Anisotropic voxels (0.8 x 1.1 x 2.5 mm), rotated about two axes, off-centre origin."""
    a, b = np.deg2rad(25.0), np.deg2rad(-10.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([0.8, 1.1, 2.5])
    affine[:3, 3] = [-41.5, 12.25, 7.0]
    return affine


def test_predict_writes_masks_in_the_input_space(trained, hippocampus, tmp_path, capsys):
    source = nib.load(hippocampus / "imagesTr" / "hippocampus_019.nii.gz")
    oblique = nib.Nifti1Image(np.asanyarray(source.dataobj).astype(np.float32), _oblique_affine())
    oblique.header.set_xyzt_units("mm")
    scan = tmp_path / "in" / "oblique_scan.nii.gz"
    scan.parent.mkdir()
    nib.save(oblique, scan)

    out = tmp_path / "predicted"
    assert main(["predict", str(trained), str(scan), "--output", str(out)]) == 0, capsys.readouterr().err
    reference, mask = nib.load(scan), nib.load(out / "oblique_scan.nii.gz")
    assert mask.shape == reference.shape
    np.testing.assert_allclose(mask.affine, reference.affine, atol=1e-6)
    np.testing.assert_allclose(mask.header.get_zooms(), reference.header.get_zooms())
    np.testing.assert_allclose(mask.header.get_zooms(), (0.8, 1.1, 2.5), rtol=1e-6)
    assert mask.header.get_xyzt_units() == reference.header.get_xyzt_units()
    labels = np.asanyarray(mask.dataobj)
    assert np.issubdtype(labels.dtype, np.integer)
    assert set(np.unique(labels)) <= {0, 1, 2} and (labels > 0).any()
    assert (out / "overlays" / "oblique_scan.png").read_bytes().startswith(b"\x89PNG")


def test_weights_refuse_a_model_of_another_architecture(trained, tmp_path):
    other = tmp_path / "other-run"
    shutil.copytree(trained, other, ignore=shutil.ignore_patterns("eval", "tensorboard", "checkpoints"))
    recipe = other / "recipe.resolved.toml"
    text = recipe.read_text()
    assert text.count("rank = 4") == 1
    recipe.write_text(text.replace("rank = 4", "rank = 8"))
    with pytest.raises(CheckpointError) as caught:
        load_run(other)
    message = str(caught.value)
    assert str(other / "weights.safetensors") in message
    found = re.search(r"(\S+\.lora_[ab]\.[qv]\.weight) has shape \((\d+), (\d+)\), "
                      r"the model expects \((\d+), (\d+)\)", message)
    assert found, message
    assert sorted(map(int, found.group(2, 3))) == [4, 96] and sorted(map(int, found.group(4, 5))) == [8, 96]


def test_explain_writes_encoder_heat_maps_side_by_side(trained, tmp_path, capsys):
    from samora_kit.cli import main
    from samora_kit.eval.explain import encoder_heatmap
    from samora_kit.flows.segment import load_run

    _, adapter, model = load_run(trained)
    case = adapter.cases("test")[0]
    heat = encoder_heatmap(model, adapter.load_case(case).image[10])
    assert heat.shape == adapter.load_case(case).image.shape[1:] and 0 <= heat.min() and heat.max() == 1
    png = tmp_path / "explain.png"
    assert main(["explain", str(trained), str(trained), "--case", case, "--output", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
