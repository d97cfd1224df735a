"""`samora-kit recipes ls` and `recipes cp`: the recipes shipped with the package, listed with their
descriptions and copied out together with every recipe they refer to."""

from __future__ import annotations

from pathlib import Path

import pytest

from samora_kit import shipped_recipes
from samora_kit.cli import main

from .conftest import shared_dataset

REPO = Path(__file__).resolve().parents[1]

# a recipes folder of our own: sub/main.toml refers to three others, through all three keys
OWN_RECIPES = {
    "base.toml": "# The base every other recipe starts from.\n[run]\nname = \"base\"\n",
    "stage1.toml": "# Stage 1 on the base.\nbase = \"base.toml\"\n",
    "sub/main.toml": "# The recipe to copy.\nbase = \"../base.toml\"\n\n[pretrain]\nrecipe = \"../stage1.toml\"\n\n"
                     "[compare]\nrecipes = [\"baseline.toml\"]\n",
    "sub/baseline.toml": "\n# A baseline, after a blank line, its first sentence over\n# two lines (e.g. these). Not this one.\n"
                         "base = \"../base.toml\"\n",
    "unrelated.toml": "[run]\nname = \"no comment\"\n",
}


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())


@pytest.fixture
def own_recipes(tmp_path, monkeypatch) -> Path:
    """OWN_RECIPES written to a folder that the commands take as the shipped recipes."""
    root = tmp_path / "shipped"
    for name, text in OWN_RECIPES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    monkeypatch.setattr(shipped_recipes, "recipes_root", lambda: root)
    return root


def test_the_package_ships_the_clones_recipes_folder():
    root = shipped_recipes.recipes_root()
    shipped = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.toml"))
    assert shipped == sorted(p.relative_to(REPO / "recipes").as_posix() for p in (REPO / "recipes").rglob("*.toml"))
    assert "quickstart.toml" in shipped and "fewshot/hippocampus_samora.toml" in shipped


def test_ls_lists_every_shipped_recipe_with_the_first_sentence_of_its_comment(capsys):
    code, out, err = _cli(capsys, "recipes", "ls")
    assert code == 0, err
    rows = {line.split()[0]: line.split(None, 1)[1].strip() for line in out.splitlines()[1:]}
    for path in (REPO / "recipes").rglob("*.toml"):
        name = path.relative_to(REPO / "recipes").as_posix()
        first = path.read_text().lstrip().splitlines()[0].lstrip("# ").strip()
        assert name in rows and rows[name].startswith(first)
        comment = " ".join(line.lstrip("# ").strip() for line in path.read_text().lstrip().splitlines()
                           if line.startswith("#"))
        assert rows[name].endswith((".", "!", "?")) or comment.startswith(rows[name]), rows[name]  # never cut
    assert rows["quickstart.toml"] == ("Quick start: a real pre-trained medical SAM (LiteMedSAM) adapted with SAMora "
                                       "and with SAMed on the same labels, on a CPU, in a few minutes.")
    assert rows["base_pretrain.toml"].startswith("Pre-train a small SAM-architecture image encoder from scratch "
                                                 "(no SAM weights exist on machines without internet access): ")
    assert rows["base_pretrain.toml"].endswith("every axial slice, 64 px.")


def test_ls_puts_the_top_folder_first_and_leaves_a_recipe_without_comment_blank(own_recipes, capsys):
    code, out, _ = _cli(capsys, "recipes", "ls")
    assert code == 0
    assert [line.rstrip() for line in out.splitlines()] == [
        "RECIPE             DESCRIPTION",
        "base.toml          The base every other recipe starts from.",
        "stage1.toml        Stage 1 on the base.",
        "unrelated.toml",
        "sub/baseline.toml  A baseline, after a blank line, its first sentence over two lines (e.g. these).",
        "sub/main.toml      The recipe to copy."]


def test_cp_copies_a_recipe_with_every_recipe_it_refers_to_keeping_the_layout(own_recipes, tmp_path, capsys):
    dest = tmp_path / "mine"
    code, out, err = _cli(capsys, "recipes", "cp", "sub/main", dest)
    assert code == 0, err
    copied = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*"))
    assert copied == ["base.toml", "stage1.toml", "sub", "sub/baseline.toml", "sub/main.toml"]  # not unrelated
    for name in ("base.toml", "stage1.toml", "sub/baseline.toml", "sub/main.toml"):
        assert (dest / name).read_text() == OWN_RECIPES[name]
        assert f"wrote {dest / name}" in out
    assert out.splitlines()[0] == f"wrote {dest / 'sub/main.toml'}"  # the named recipe first
    assert f"samora-kit run {dest / 'sub/main.toml'}" in out
    # the copy refers to its own files, as the shipped recipes do to theirs
    assert len(shipped_recipes.with_references(dest / "sub/main.toml", dest.resolve())) == 4


def test_cp_into_a_toml_file_name_renames_the_recipe(own_recipes, tmp_path, capsys):
    code, out, err = _cli(capsys, "recipes", "cp", "stage1.toml", tmp_path / "edit" / "my_stage1.toml")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "edit").iterdir()) == ["base.toml", "my_stage1.toml"]
    assert (tmp_path / "edit" / "my_stage1.toml").read_text() == OWN_RECIPES["stage1.toml"]


def test_cp_into_a_file_name_refuses_a_recipe_whose_references_leave_its_folder(own_recipes, tmp_path, capsys):
    code, _, err = _cli(capsys, "recipes", "cp", "sub/main", tmp_path / "main.toml")
    assert code == 2
    assert "sub/main refers to base.toml, outside its own folder" in err and "recipes cp sub/main DIR" in err
    assert not (tmp_path / "main.toml").exists()


def test_cp_refuses_to_overwrite_without_force(own_recipes, tmp_path, capsys):
    assert _cli(capsys, "recipes", "cp", "stage1", tmp_path)[0] == 0
    (tmp_path / "base.toml").write_text("# edited\n")
    code, _, err = _cli(capsys, "recipes", "cp", "stage1", tmp_path)
    assert code == 2
    assert f"refusing to overwrite {tmp_path / 'stage1.toml'}, {tmp_path / 'base.toml'}: pass --force" in err
    assert (tmp_path / "base.toml").read_text() == "# edited\n"  # nothing written, not even the new files
    assert _cli(capsys, "recipes", "cp", "stage1", tmp_path, "--force")[0] == 0
    assert (tmp_path / "base.toml").read_text() == OWN_RECIPES["base.toml"]


def test_cp_of_an_unknown_recipe_says_did_you_mean(own_recipes, tmp_path, capsys):
    code, _, err = _cli(capsys, "recipes", "cp", "sub/mian", tmp_path / "out")
    assert code == 2
    assert "no shipped recipe 'sub/mian' (did you mean 'sub/main'?)" in err and "recipes ls" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("reference, problem", [
    ('[pretrain]\nrecipe = "missing.toml"', "pretrain.recipe = 'missing.toml' names missing.toml, which is not"),
    ('[compare]\nrecipes = ["base.toml", "../../outside.toml"]', "compare.recipes = '../../outside.toml' points "
                                                                 "outside the recipes folder"),
    ('base = 3', "base holds 3; expected the path of a recipe file"),
])
def test_cp_names_the_key_and_recipe_of_a_broken_reference(own_recipes, tmp_path, capsys, reference, problem):
    (own_recipes / "stage1.toml").write_text(f"# Broken.\n{reference}\n")
    (tmp_path / "outside.toml").write_text("")
    code, _, err = _cli(capsys, "recipes", "cp", "sub/main", tmp_path / "out")
    assert code == 2
    assert f"stage1.toml: {problem}" in err  # found through sub/main's [pretrain] recipe
    assert not (tmp_path / "out").exists()


def test_cp_of_a_shipped_recipe(tmp_path, capsys):
    code, out, err = _cli(capsys, "recipes", "cp", "recipes/tiny/quickstart_samed.toml", tmp_path)  # as a clone spells it
    assert code == 0, err
    copied = (tmp_path / "quickstart_samed.toml").read_bytes()
    assert copied == (REPO / "recipes/tiny/quickstart_samed.toml").read_bytes()  # it names no path: copied as is


PATHS_RECIPE = """# Paths that lead out of the recipes folder.
task = "segment"

[run]
output_dir = "../runs/paths"  # beside the recipes folder

[backbone]
name = "sam"
variant = "tiny"
checkpoint = "../weights/base.safetensors"  # another run makes it

[decoder]
name = "samed"

[data]
name = "decathlon"
root = "../data/hippocampus"  # the data, beside the recipes folder
train = { split_file = "../data/hippocampus/split.json", key = "train" }
"""


def test_cp_makes_paths_outside_the_copy_absolute_and_names_the_key_of_each_missing_one(own_recipes, tmp_path,
                                                                                       capsys):
    (own_recipes / "paths.toml").write_text(PATHS_RECIPE)
    (own_recipes / "sub" / "on_paths.toml").write_text('# Over paths.toml.\nbase = "../paths.toml"\n\n[data]\n'
                                                       'test = { split_file = "../../data/hippocampus/split.json", '
                                                       'key = "test" }\n')
    data = tmp_path / "data" / "hippocampus"
    data.mkdir(parents=True)
    (data / "split.json").write_text("{}")
    code, out, err = _cli(capsys, "recipes", "cp", "sub/on_paths", tmp_path / "out")
    assert code == 0, err
    copied = (tmp_path / "out" / "paths.toml").read_text()
    # the data is there: each value becomes the absolute path it named, the comments stay
    assert f'root = "{data}"  # the data, beside the recipes folder\n' in copied
    assert f'train = {{ split_file = "{data / "split.json"}", key = "train" }}' in copied
    assert f'test = {{ split_file = "{data / "split.json"}", key = "test" }}' in \
        (tmp_path / "out" / "sub" / "on_paths.toml").read_text()  # a base's own paths, and the recipe's own
    assert f"paths.toml: data.root = '{data}' (was '../data/hippocampus')" in out
    # the checkpoint is not: it stays as written, and the key to edit is named
    assert 'checkpoint = "../weights/base.safetensors"  # another run makes it' in copied
    assert (f"paths.toml: backbone.checkpoint = '../weights/base.safetensors' names "
            f"{tmp_path / 'weights' / 'base.safetensors'}, which does not exist; edit backbone.checkpoint") in out
    assert f"paths.toml: run.output_dir = '../runs/paths' puts the run outside the copy, in {tmp_path / 'runs/paths'}" \
        in out
    assert 'base = "../paths.toml"' in (tmp_path / "out" / "sub" / "on_paths.toml").read_text()  # copied along


def test_a_copied_shipped_recipe_validates_where_it_lands(tmp_path, capsys, monkeypatch):
    data = shared_dataset("msd_hippocampus")
    code, out, err = _cli(capsys, "recipes", "cp", "fewshot/hippocampus_unet", tmp_path / "mine")
    assert code == 0, err
    assert f"fewshot/hippocampus_samed.toml: data.root = '{data.resolve()}'" in out
    checkpoint = REPO / "runs" / "base-hippocampus" / "base.safetensors"  # the SAM arms' base: made by a run
    assert ("fewshot/hippocampus_samed.toml: backbone.checkpoint = " + (
        f"'{checkpoint}'" if checkpoint.exists() else "'../../runs/base-hippocampus/base.safetensors' names")) in out
    monkeypatch.chdir(tmp_path)  # away from the clone: nothing of it is read
    code, out, err = _cli(capsys, "validate", "mine/hippocampus_unet.toml")
    assert code == 0, err
    assert out.startswith("mine/hippocampus_unet.toml: valid")


def test_cp_copies_each_recipe_once_through_repeated_and_circular_references(own_recipes, tmp_path, capsys):
    (own_recipes / "stage1.toml").write_text('# Circular.\nbase = "base.toml"\n\n[compare]\n'
                                             'recipes = ["base.toml", "sub/main.toml"]\n')
    code, out, err = _cli(capsys, "recipes", "cp", "sub/main", tmp_path / "out")
    assert code == 0, err
    assert sorted(line for line in out.splitlines() if line.startswith("wrote")) == sorted(
        f"wrote {tmp_path / 'out' / name}" for name in ("base.toml", "stage1.toml", "sub/baseline.toml", "sub/main.toml"))
