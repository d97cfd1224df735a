"""One command builds the miniature world (issue 11, point 4): every stage cached by a fingerprint of its
settings and of the files it reads; a stage with new inputs is rebuilt and the stages reading its files
follow, the others are reused."""

from __future__ import annotations

import dataclasses
import json

import pytest

from samora_benchmarks.world import build, mini_sam
from samora_kit.plugins import default_registry
from samora_kit.recipe import load_recipe

from test_world_teachers import tiny_settings

SOURCE_MAE = ("train.max_steps=1", "train.batch_size=2", "data.num_images=4", "backbone.image_size=64")
TINY = build.Scale(
    source_mae=SOURCE_MAE,
    mini_sam=mini_sam.Settings(source="scenes", steps=1, batch_size=2, prompts_per_image=2, corrections=0,
                               num_scenes=4, eval_images=2, warmup=0.0),
    teachers=tiny_settings(),
    stage1=())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    return root, build.build_world(root, TINY, targets=[], device="cpu", scale_name="tiny")


def test_the_source_stages_are_built_in_order_and_recorded(world):
    root, record = world
    assert list(record["stages"]) == ["source_mae", "mini_sam", "teachers"]
    assert json.loads((root / build.RECORD).read_text()) == record
    assert (root / "source_mae" / "base.safetensors").is_file()
    assert (root / "mini_sam" / mini_sam.PTH).is_file() and (root / "mini_sam" / mini_sam.SAFETENSORS).is_file()
    assert {p.name for p in (root / "teachers").glob("*.pth")} == {"simclrv2_mini.pth", "mae_mini.pth"}
    stages = record["stages"]
    assert stages["mini_sam"]["inputs"]["encoder"] == stages["source_mae"]["sha256"]  # what it was built from
    assert all(stage["status"] == "done" and stage["wall_s"] >= 0 for stage in stages.values())


def test_a_rerun_reuses_every_stage(world, monkeypatch):
    root, record = world

    def no_training(*args, **kwargs):
        raise AssertionError("a stage with unchanged inputs was built again")

    monkeypatch.setattr(build, "run", no_training)
    monkeypatch.setattr(build.mini_sam, "build_mini_sam", no_training)
    monkeypatch.setattr(build.teachers, "build_teachers", no_training)
    assert build.build_world(root, TINY, targets=[], device="cpu", scale_name="tiny")["stages"] == record["stages"]


def test_new_inputs_rebuild_the_stage_and_the_stages_reading_its_files(tmp_path, world, monkeypatch):
    root, record = world
    copy = tmp_path / "world"
    import shutil
    shutil.copytree(root, copy)
    built = []
    real_build = build.World.stage

    def watch(self, name, inputs, make):
        def make_and_note(folder):
            built.append(name)
            return make(folder)
        return real_build(self, name, inputs, make_and_note)

    monkeypatch.setattr(build.World, "stage", watch)
    changed = dataclasses.replace(TINY, source_mae=(*SOURCE_MAE, "train.lr=0.01"))
    after = build.build_world(copy, changed, targets=[], device="cpu", scale_name="tiny")
    assert built == ["source_mae", "mini_sam"]  # the teachers read nothing the source MAE wrote
    old = record["stages"]
    assert after["stages"]["source_mae"]["fingerprint"] != old["source_mae"]["fingerprint"]
    assert after["stages"]["mini_sam"]["inputs"]["encoder"] == after["stages"]["source_mae"]["sha256"]
    assert after["stages"]["teachers"] == old["teachers"]
    assert (copy / f"source_mae.stale-{old['source_mae']['fingerprint']}" / "base.safetensors").is_file()


@pytest.mark.parametrize("target", build.TARGETS)
def test_stage1_is_pointed_at_the_worlds_files(target, tmp_path):
    overrides = build.stage1_overrides(tmp_path, build.SCALES["gpu"], target)
    recipe = load_recipe(build.RECIPES / f"stage1_{target}.toml", default_registry(), overrides)
    assert recipe.run.output_dir == tmp_path / f"stage1_{target}"
    assert recipe.backbone.checkpoint == tmp_path / "mini_sam" / mini_sam.SAFETENSORS
    assert [e.teacher.checkpoint for e in recipe.experts[:2]] == [tmp_path / "teachers" / "simclrv2_mini.pth",
                                                                  tmp_path / "teachers" / "mae_mini.pth"]
    assert recipe.train.epochs == 3  # the GPU scale's overrides reach the recipe


def test_the_docs_table_gives_each_stage_with_its_figures(world):
    root, record = world
    table = build.world_table(record, "python -m samora_benchmarks.world.build", root)
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| stage |")]
    assert [row.split(" | ")[0][2:] for row in rows] == ["source_mae", "mini_sam", "teachers", "**all stages**"]
    stages = record["stages"]
    box = stages["mini_sam"]["held_out_after"]["scenes"]["box_miou"]
    assert f"scenes {box:.3f}" in table and "simclrv2: loss" in table and "mae: loss" in table
    assert f"`{root / build.RECORD}` holds every figure" in table  # the record of this root, not the default
    for digest in (stages["mini_sam"]["sha256"], stages["teachers"]["mae"]["sha256"]):
        assert digest[:12] in table  # so two builds of the world can be compared
    assert f"**{sum(s['wall_s'] for s in stages.values()):.0f}**" in rows[-1]
