"""Mini-teachers of the miniature world (issue 11): trained from random weights on the source domain by their
own CPT objectives through the kit's loop, exported in the official layouts, read back bit for bit by the
registry's teacher loaders, and used by stage 1 (CPT on the target's pool, then distillation)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from samora_benchmarks.world import teachers
from samora_kit.cli import main
from samora_kit.errors import SamoraError
from samora_kit.plugins import default_registry
from samora_kit.recipe import load_recipe
from samora_kit.runner import run
from samora_kit.weights.io import load_weights, read_header
from samora_kit_plugins.sam_weights import save_sam_layout
from samora_kit_plugins.sam import SamBackboneConfig, build_sam_backbone

from tests.conftest import shared_dataset
from tests.synthetic import STAGE1_EXPERTS, pool_recipe, write_decathlon
from tests.test_teachers import TINY_RESNET, TINY_VIT, run_cpt

REPO = Path(__file__).resolve().parents[2]
S = 64  # the tiny SAM's image size in pool_recipe
TINY_MAE = {k: v for k, v in TINY_VIT.items() if k != "image_size"}  # Settings gives the image size
STEPS = 3


def tiny_settings(**changes) -> teachers.Settings:
    plan = {"steps": STEPS, "batch_size": 4, "lr": 2e-3, "weight_decay": 0.0, "checkpoint_every": STEPS}
    return dataclasses.replace(teachers.Settings(
        source="scenes", image_size=S, num_scenes=8, bn_batches=2,
        simclrv2=teachers.TeacherPlan({**TINY_RESNET, "projection_dim": 16}, **plan),
        mae=teachers.TeacherPlan(TINY_MAE, **plan)), **changes)


@pytest.fixture(scope="module")
def registry():
    return default_registry()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """Both tiny teachers trained a few steps on 8 generated scenes, exported in one --out folder."""
    out = tmp_path_factory.mktemp("teachers")
    return out, teachers.build_teachers(tiny_settings(), out, show_progress=False)


def official_tensors(path: Path) -> dict[str, torch.Tensor]:
    """What the teacher loader sees in an exported file: {"resnet", "head"} / {"model"} flattened."""
    wrapped = torch.load(path, map_location="cpu", weights_only=True)
    if "model" in wrapped:
        return dict(wrapped["model"])
    return {f"{part}.{k}": v for part in ("resnet", "head") for k, v in wrapped[part].items()}


def reload(registry, record: dict, path: Path):
    table = dict(record["recipe_teacher"])
    return registry.get("teacher", table.pop("name")).build({**table, "checkpoint": path})


# ---- training from scratch --------------------------------------------------------------------------

@pytest.mark.parametrize("key", list(teachers.TEACHERS))
def test_cpt_objective_from_random_weights_decreases_on_a_fixed_batch_of_source_images(key, registry):
    settings = tiny_settings()
    images, _ = teachers.source_images(settings, registry=registry)
    batch = torch.stack([images[i] for i in range(4)])  # 4 scenes, 3,64,64 in [0, 1]
    torch.manual_seed(0)
    teacher = registry.get("teacher", teachers.TEACHERS[key][0]).build(teachers.architecture_of(key, settings))
    losses = run_cpt(teacher, batch, steps=8)  # the same views / masks every step
    assert np.isfinite(losses).all() and losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("key", list(teachers.TEACHERS))
def test_each_mini_teacher_trains_through_the_kits_loop_and_records_its_run(key, built):
    out, records = built
    record, stem = records[key], teachers.TEACHERS[key][1]
    assert record["status"] == "done" and record["steps"] == STEPS and record["resumed_at"] is None
    assert np.isfinite([record["first_loss"], record["final_loss"]]).all()
    assert record["data"] == {"scenes": {"num_images": 8, "seed": 0}}
    assert json.loads((out / f"{stem}.json").read_text()) == record
    logged = [json.loads(line) for line in (out / stem / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged] == [1, STEPS] and all(np.isfinite(row["loss"]) for row in logged)
    assert read_header(out / stem / "checkpoints" / "last.safetensors")["step"] == STEPS
    assert record["precise_bn_batches"] == (2 if key == "simclrv2" else 0)  # the ViT has no BatchNorm


def test_kvasir_source_is_stretched_and_leaves_out_the_splits_test_images(registry):
    root = shared_dataset("kvasir_seg")
    images, described = teachers.source_images(tiny_settings(source="kvasir_seg"), root, registry)
    test = set(json.loads((root / "split.json").read_text())["test"])
    assert len(images) == described["kvasir_seg"]["images"] == 1000 - len(test)
    first = images[0]
    assert first.shape == (3, S, S) and first[:, -1].max() > 0  # stretched: no letterbox rows at the bottom


def test_the_cli_takes_a_preset_and_adjusts_it():
    settings, args = teachers.parse_args(["--out", "x", "--scale", "gpu", "--steps", "5", "--source", "scenes",
                                          "--image-size", "96"])
    assert (settings.source, settings.image_size, args.teachers) == ("scenes", 96, ["simclrv2", "mae"])
    assert (settings.simclrv2.steps, settings.mae.steps) == (5, 5)
    assert settings.mae.batch_size == teachers.PRESETS["gpu"].mae.batch_size
    assert teachers.architecture_of("mae", settings)["image_size"] == 96  # the MAE's grid follows the SAM's
    with pytest.raises(SystemExit):
        teachers.parse_args(["--out", "x", "--image-size", "100"])  # not a whole number of 16-px patches


# ---- export ------------------------------------------------------------------------------------------

def test_exports_have_the_official_wrappers_and_key_names(built):
    out, records = built
    simclr = torch.load(out / "simclrv2_mini.pth", weights_only=True)
    assert set(simclr) == {"resnet", "head"}  # Separius/SimCLRv2-Pytorch's convert.py
    assert "net.0.0.weight" in simclr["resnet"] and "layers.0.weight" in simclr["head"]
    mae = torch.load(out / "mae_mini.pth", weights_only=True)
    assert set(mae) == {"model"}  # facebookresearch/mae
    keys = set(mae["model"])
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.1.attn.qkv.weight", "norm.bias",
            "mask_token", "decoder_embed.weight", "decoder_blocks.0.mlp.fc2.bias", "decoder_pred.bias"} <= keys
    assert mae["model"]["pos_embed"].shape == (1, 1 + (S // 16) ** 2, TINY_VIT["embed_dim"])


@pytest.mark.parametrize("key", list(teachers.TEACHERS))
def test_the_registrys_teacher_loader_gives_the_trained_weights_back_bit_for_bit(key, built, registry):
    out, records = built
    record = records[key]
    loaded = reload(registry, record, out / record["pth"])
    assert not any(p.requires_grad for p in loaded.parameters())
    own = loaded.cpt_tensors()
    exported = official_tensors(out / record["pth"])
    assert set(own) == set(exported)
    assert all(torch.equal(own[k], exported[k]) for k in own)
    trained, _ = load_weights(out / teachers.TEACHERS[key][1] / "checkpoints" / "last.safetensors")
    weights = {k.split("/", 1)[1]: v for k, v in trained.items() if k.startswith("model/")}
    if key == "mae":  # the CPT objective holds the teacher's .vit and .decoder: official keys without those
        weights = {k.split(".", 1)[1]: v for k, v in weights.items()}
    assert weights and all(torch.equal(own[k], v) for k, v in weights.items())  # what the loop trained


def test_a_rerun_reuses_the_files_and_a_finished_teacher_of_other_settings_is_not_replaced(built, tmp_path):
    out, records = built
    before = {key: (out / r["pth"]).stat().st_mtime_ns for key, r in records.items()}
    again = teachers.build_teachers(tiny_settings(), out, show_progress=False)
    assert again == records and {k: (out / r["pth"]).stat().st_mtime_ns for k, r in again.items()} == before
    with pytest.raises(SamoraError, match="holds a simclrv2_mini of other settings"):
        teachers.build_teachers(tiny_settings(seed=5), out, ["simclrv2"], show_progress=False)
    unfinished = tmp_path / "unfinished"  # a run of other settings that never finished is started over
    unfinished.mkdir()
    (unfinished / "mae_mini.json").write_text(json.dumps({"fingerprint": "0123", "status": "training"}))
    record = teachers.build_teachers(tiny_settings(), unfinished, ["mae"], show_progress=False)["mae"]
    assert (record["status"], record["fingerprint"]) == ("done", records["mae"]["fingerprint"])


class Killed(Exception):
    pass


def test_an_interrupted_build_resumes_and_exports_the_uninterrupted_teacher(tmp_path, monkeypatch):
    plan = dataclasses.replace(tiny_settings().simclrv2, steps=2, checkpoint_every=1)
    settings = tiny_settings(simclrv2=plan)
    whole = teachers.build_teachers(settings, tmp_path / "whole", ["simclrv2"], show_progress=False)["simclrv2"]

    def kill_after_the_first_step(step: int) -> None:  # called after the step's checkpoint
        if step == 1:
            raise Killed
    with pytest.raises(Killed):
        teachers.build_teachers(settings, tmp_path / "cut", ["simclrv2"], show_progress=False,
                                step_callbacks=[kill_after_the_first_step])
    resumed = teachers.build_teachers(settings, tmp_path / "cut", ["simclrv2"], show_progress=False)["simclrv2"]
    assert (resumed["resumed_at"], resumed["steps"]) == (1, 2)
    a, b = official_tensors(tmp_path / "whole" / whole["pth"]), official_tensors(tmp_path / "cut" / resumed["pth"])
    assert all(torch.equal(a[k], b[k]) for k in a)  # BatchNorm statistics included (precise BN)


# ---- the stage-1 recipes ------------------------------------------------------------------------------

def inline_table(table: dict) -> str:
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in table.items()) + " }"


def test_stage1_runs_cpt_and_distillation_with_the_exported_mini_teachers(built, tmp_path):
    out, records = built
    tail = STAGE1_EXPERTS
    for pretext, key in (("simclrv2", "simclrv2"), ("mae", "mae")):
        line = f'pretext = {{ name = "{pretext}", hidden_dim = 32 }}'
        table = {**records[key]["recipe_teacher"], "checkpoint": str(out / records[key]["pth"]), "cpt": True}
        assert line in tail
        tail = tail.replace(line, f"{line}\nteacher = {inline_table(table)}")
    pool = write_decathlon(tmp_path / "pool", n_cases=2, shape=(24, 24, 4))
    run_dir = tmp_path / "stage1"
    recipe = tmp_path / "stage1.toml"
    recipe.write_text(pool_recipe(pool, run_dir, seed=3, max_steps=1, tail=tail))
    run(recipe, [], False, ["test"], show_progress=False)

    assert sorted(p.name for p in (run_dir / "experts").iterdir()) == [
        "image.safetensors", "patch.safetensors", "pixel.safetensors"]
    cpt_files = {"image-simclrv2_resnet.safetensors": "simclrv2", "patch-mae_vit.safetensors": "mae"}
    assert sorted(p.name for p in (run_dir / "teachers").iterdir()) == sorted(cpt_files)
    for name, key in cpt_files.items():
        continued, _ = load_weights(run_dir / "teachers" / name)
        exported = official_tensors(out / records[key]["pth"])
        assert set(continued) == set(exported)
        assert any(not torch.equal(continued[k], exported[k]) for k in exported)  # CPT trained the teacher
    for expert, teacher in (("image", "simclrv2_resnet"), ("patch", "mae_vit"), ("pixel", None)):
        header = read_header(run_dir / "experts" / f"{expert}.safetensors")
        assert (header["teacher"], header["teacher_cpt"], header["steps"]) == (teacher, teacher is not None, 1)


@pytest.mark.parametrize("target", ["hippocampus", "acdc"])
def test_world_stage1_recipes_validate_and_read_what_teachers_py_exports(target, registry, tmp_path, capsys):
    shared_dataset({"hippocampus": "msd_hippocampus", "acdc": "acdc"}[target])  # the recipe's unlabelled pool
    settings = teachers.PRESETS["cpu"]
    for key in teachers.TEACHERS:  # one architecture at every scale: the recipes read either file
        assert teachers.architecture_of(key, teachers.PRESETS["gpu"]) == teachers.architecture_of(key, settings)
    files = {}
    for key, (name, stem) in teachers.TEACHERS.items():
        torch.manual_seed(0)
        teacher = registry.get("teacher", name).build(teachers.architecture_of(key, settings))
        files[key] = tmp_path / f"{stem}.pth"
        torch.save(teachers.official_layout(key, teacher), files[key])
    sam = build_sam_backbone(SamBackboneConfig(variant="tiny", image_size=settings.image_size))
    files["sam"], _ = save_sam_layout(tmp_path / "mini_sam.safetensors", sam.encoder_state_in_official_layout(),
                                      {"format": "sam-encoder", "origin": "test stand-in", "variant": "tiny"})
    path = REPO / "benchmarks" / "recipes" / "world" / f"stage1_{target}.toml"
    overrides = [f"experts.0.teacher.checkpoint={files['simclrv2']}", f"experts.1.teacher.checkpoint={files['mae']}"]
    recipe = load_recipe(path, registry, overrides)
    assert recipe.task == "pretrain_experts" and recipe.backbone.image_size == settings.image_size
    assert str(recipe.backbone.checkpoint).endswith("runs/world/mini_sam/mini_sam.safetensors")
    assert [(e.name, e.pretext.name, e.teacher and e.teacher.name) for e in recipe.experts] == [
        ("image", "simclrv2", "simclrv2_resnet"), ("patch", "mae", "mae_vit"), ("pixel", "denoise", None)]
    for entry, key in zip(recipe.experts, teachers.TEACHERS):
        assert entry.teacher.cpt
        teacher = registry.get("teacher", entry.teacher.name).build(entry.teacher)  # refuses another architecture
        exported = official_tensors(files[key])
        assert all(torch.equal(v, exported[k]) for k, v in teacher.cpt_tensors().items())
    # once the world's files exist the recipe validates completely (backbone built, the MAE's grid checked)
    assert main(["validate", str(path), f"backbone.checkpoint={files['sam']}", *overrides]) == 0, \
        capsys.readouterr().err
