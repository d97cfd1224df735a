"""One schema and one flow per task; every path in a recipe resolves from the recipe's folder;
`validate` checks the files, recipes and cross-references a recipe names, and every plugin's own
checks against the built backbone."""

from __future__ import annotations

from pathlib import Path

import pytest

from samora_kit.checks import check_references, check_with_backbone
from samora_kit.errors import RecipeError
from samora_kit.hookspecs import hookimpl
from samora_kit.plugins import default_plugins, load_plugins
from samora_kit.recipe import load_recipe
from .synthetic import STAGE1_EXPERTS, pool_recipe, tiny_recipe, write_decathlon

STAGE2 = """
[backbone.experts]
names = ["image", "patch", "pixel"]

[fuser]
name = "hl_attn"
order = {order}
width = 16
heads = 2

[pretrain]
recipe = "{stage1}"
"""


@pytest.fixture
def registry():
    return default_plugins().registry


@pytest.fixture
def world(tmp_path):
    data = write_decathlon(tmp_path / "data", n_cases=3)
    (tmp_path / "recipes" / "stage1").mkdir(parents=True)
    stage1 = tmp_path / "recipes" / "stage1" / "experts.toml"
    stage1.write_text(pool_recipe(data, tmp_path / "runs" / "stage1", seed=1, max_steps=1, tail=STAGE1_EXPERTS))
    segment = tmp_path / "recipes" / "samora.toml"
    segment.write_text(tiny_recipe(data, tmp_path / "runs" / "samora", ["case_000"], ["case_001"])
                       + STAGE2.format(order='["pixel", "patch", "image"]', stage1="stage1/experts.toml"))
    return tmp_path, stage1, segment


def test_a_key_that_does_nothing_in_a_task_is_rejected(world, registry):
    _, stage1, _ = world
    stage1.write_text(stage1.read_text().replace("[train]\n", "[train]\nce_weight = 0.5\n"))
    with pytest.raises(RecipeError, match=r"train.ce_weight = 0.5: unknown key"):
        load_recipe(stage1, registry)
    with pytest.raises(RecipeError, match=r"eval = .*unknown key for task = 'pretrain_experts'; it belongs to "
                                          r"task = 'segment' recipes"):
        load_recipe(stage1, registry, ["eval.overlays=2"])


def test_paths_resolve_from_the_recipe_file_that_holds_them(tmp_path, registry, monkeypatch):
    data = write_decathlon(tmp_path / "project" / "data", n_cases=3)
    (data / "splits.json").write_text('{"train": ["case_000"], "test": ["case_001"]}')
    (data / "other_splits.json").write_text('{"train": ["case_002"], "test": ["case_001"]}')
    common = tmp_path / "project" / "recipes" / "common.toml"
    common.parent.mkdir()
    common.write_text(tiny_recipe(Path("../data"), Path("../runs/common"), [], [])
                      .replace('train = { cases = [] }', 'train = { split_file = "../data/splits.json", key = "train" }')
                      .replace('test = { cases = [] }', 'test = { split_file = "../data/splits.json", key = "test" }'))
    child = tmp_path / "project" / "recipes" / "variants" / "split.toml"
    child.parent.mkdir()
    # [data] leaves `name` to its base: its paths are still read as the decathlon adapter's
    child.write_text('base = "../common.toml"\n[data]\ntrain = { split_file = "../../data/other_splits.json" }\n')
    monkeypatch.chdir(tmp_path)  # the working directory plays no part ...
    recipe = load_recipe(child, registry)
    assert recipe.data.root == data.resolve()                                   # from common.toml's folder
    assert recipe.data.train.split_file == (data / "other_splits.json").resolve()  # from split.toml's folder
    assert recipe.data.train.key == "train"                                     # merged from common.toml
    assert recipe.data.test.split_file == (data / "splits.json").resolve()      # from common.toml's folder
    assert recipe.run.output_dir == (tmp_path / "project" / "runs" / "common").resolve()
    assert recipe.decoder.checkpoint == "backbone"  # a word of the schema, not a path
    # ... except for overrides, typed in a shell: they resolve from where it stands
    overridden = load_recipe(child, registry, ["run.output_dir=elsewhere"])
    assert overridden.run.output_dir == (tmp_path / "elsewhere").resolve()  # absolute in the resolved recipe


def test_validate_checks_named_files_and_chained_recipes(world, registry):
    root, stage1, segment = world
    assert check_references(load_recipe(segment, registry), registry) == []
    bad = segment.parent / "bad.toml"
    bad.write_text(segment.read_text().replace('recipe = "stage1/experts.toml"', 'recipe = "stage1/expert.toml"'))
    problems = check_references(load_recipe(bad, registry), registry)
    assert problems == [f"pretrain.recipe = '{stage1.parent / 'expert.toml'}': no such file or folder",
                        f"pretrain.recipe: {stage1.parent / 'expert.toml'}: 1 problem(s)\n  - no such recipe file"]
    wrong_task = segment.parent / "wrong_task.toml"
    wrong_task.write_text(segment.read_text().replace('recipe = "stage1/experts.toml"', 'recipe = "samora.toml"'))
    problems = check_references(load_recipe(wrong_task, registry), registry)
    assert problems == [f"pretrain.recipe: pretrain.recipe = '{segment}' is a 'segment' recipe; "
                        "expected one with task = \"pretrain_experts\""]
    unknown = segment.parent / "unknown_expert.toml"
    unknown.write_text(segment.read_text().replace('names = ["image", "patch", "pixel"]', 'names = ["image", "region"]')
                       .replace('order = ["pixel", "patch", "image"]', 'order = ["image", "region"]'))
    (problem,) = check_references(load_recipe(unknown, registry), registry)
    assert "backbone.experts.names ['region'] are neither in pretrain.recipe" in problem
    baseline = segment.parent / "with_baseline.toml"
    baseline.write_text(segment.read_text() + '\n[compare]\nrecipes = ["stage1/experts.toml"]\n')
    (problem,) = check_references(load_recipe(baseline, registry), registry)
    assert problem.startswith(f"compare.recipes: compare.recipes.0 = '{stage1}' is a 'pretrain_experts' recipe")


def test_validate_catches_a_fuser_order_naming_no_expert_before_anything_trains(world, registry, capsys):
    from samora_kit.cli import main

    _, _, segment = world
    segment.write_text(segment.read_text().replace('order = ["pixel", "patch", "image"]',
                                                   'order = ["pixel", "pach", "image"]'))
    assert main(["validate", str(segment)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "order entry 'pach' is not an expert of this backbone" in err
    assert not (segment.parent.parent / "runs").exists()


def test_plugins_check_a_recipe_against_the_built_backbone(world):
    root, stage1, _ = world
    seen = {}

    class GridCheck:  # a third-party check: its pretext level cuts the embedding grid into tiles
        @staticmethod
        @hookimpl
        def samora_kit_check_recipe(recipe, backbone):
            seen["grid"] = backbone.embed_grid
            return [] if backbone.embed_grid % 3 == 0 else [
                f"experts.0.pretext.grid = 3: must divide the backbone's {backbone.embed_grid}-cell grid"]

    plugins = load_plugins(extra=[GridCheck])
    recipe = load_recipe(stage1, plugins.registry)
    assert check_with_backbone(recipe, plugins) == ["experts.0.pretext.grid = 3: must divide the backbone's "
                                                    "4-cell grid"]
    assert seen["grid"] == 4  # the tiny SAM at 64 px, built
    stage2 = check_with_backbone(load_recipe(world[2], plugins.registry), plugins)  # checks the chained stage 1 too
    assert stage2 == ["experts.0.pretext.grid = 3: must divide the backbone's 4-cell grid",
                      f"in {stage1}: experts.0.pretext.grid = 3: must divide the backbone's 4-cell grid"]
    with_teacher = stage1.parent / "teacher.toml"
    with_teacher.write_text(stage1.read_text().replace(
        'pretext = { name = "mae", hidden_dim = 32 }',
        'pretext = { name = "mae", hidden_dim = 32 }\nteacher = { name = "mae_vit", image_size = 32, patch_size = 16, '
        'embed_dim = 32, depth = 1, num_heads = 2, decoder_embed_dim = 16, decoder_depth = 1, decoder_num_heads = 2 }'))
    problems = check_with_backbone(load_recipe(with_teacher, plugins.registry), plugins)
    assert any(p.startswith("experts.1.teacher.image_size = 32: the backbone reads 64-px images") for p in problems)
