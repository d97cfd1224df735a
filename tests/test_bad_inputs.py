"""The bad-input corpus: recipes, overrides, data, weights and command lines a user gets wrong. Each case
asserts the exit code, the words of the message, that no traceback shows, and that a finished run
folder the command could have touched (and the input files) are unchanged."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from samora_kit.cli import main

from .synthetic import relabel, snapshot, tiny_recipe, write_decathlon

pytestmark = pytest.mark.slow


@dataclass
class World:
    root: Path
    data: Path
    recipe: Path  # a valid recipe whose run folder (`done`) holds a finished run
    done: Path

    def edit(self, *replacements: tuple[str, str], name: str = "edited.toml") -> Path:
        text = self.recipe.read_text()
        for old, new in replacements:
            assert old in text, old
            text = text.replace(old, new, 1)
        path = self.root / name
        path.write_text(text)
        return path

    def write(self, name: str, text: str | bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
        return path

    def data_copy(self, change: Callable[[Path], None]) -> Path:
        """A copy of the data folder with `change` applied; returns the copy's root."""
        copy = self.root / "data-copy"
        shutil.copytree(self.data, copy)
        change(copy)
        return copy


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Data, a valid recipe and its finished run, made once for the module."""
    root = tmp_path_factory.mktemp("finished")
    data = write_decathlon(root / "data", n_cases=3, shape=(24, 24, 6))
    recipe = root / "recipe.toml"
    recipe.write_text(tiny_recipe(data, root / "done", ["case_000", "case_001"], ["case_002"], epochs=1,
                                  warmup=0))
    assert main(["run", str(recipe), "eval.overlays=0"]) == 0
    return data, recipe, root / "done"


@pytest.fixture
def world(finished, tmp_path) -> World:
    data, recipe, done = finished
    local = tmp_path / "recipe.toml"
    local.write_text(recipe.read_text().replace(str(done), str(tmp_path / "run")))  # a fresh run folder
    return World(tmp_path, data, local, done)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


def _pack(w: World, rank: int = 4) -> Path:
    from samora_kit_plugins.sam import SamBackboneConfig, build_sam_backbone
    from samora_kit_plugins.lora.expert_pack import save_expert_pack

    backbone = build_sam_backbone(SamBackboneConfig(variant="tiny", image_size=64, lora={"rank": rank}))
    pack = backbone.expert_pack("image", pretext="simclrv2")
    return save_expert_pack(w.root / "image.safetensors", pack.tensors, pack.header)


CASES: dict[str, tuple[Callable[[World], list], int, list[str]]] = {
    # --- recipes -----------------------------------------------------------------------------------
    "recipe: unknown key": (lambda w: ["validate", w.edit(("epochs = 1", "epoch = 1"))], 2,
                            ["train.epoch = 1: unknown key (did you mean 'epochs'?)"]),
    "recipe: wrong type": (lambda w: ["validate", w.edit(("epochs = 1", 'epochs = "many"'))], 2,
                           ["train.epochs = 'many'", "integer"]),
    "recipe: unknown component": (lambda w: ["validate", w.edit(('name = "samed"', 'name = "samd"'))], 2,
                                  ["decoder.name = 'samd': no decoder of that name (did you mean 'samed'?)"]),
    "recipe: negative epochs": (lambda w: ["validate", w.edit(("epochs = 1", "epochs = -1"))], 2,
                                ["train.epochs = -1", "greater than or equal to 1"]),
    "recipe: zero lr": (lambda w: ["validate", w.edit(("lr = 0.005", "lr = 0"))], 2,
                        ["train.lr = 0", "greater than 0"]),
    "recipe: warm-up fraction of 1.5": (lambda w: ["validate", w.edit(("warmup = 0", "warmup = 1.5"))], 2,
                                        ["train.warmup = 1.5", "must be in [0, 1)"]),
    "recipe: negative warm-up": (lambda w: ["validate", w.edit(("warmup = 0", "warmup = -5"))], 2,
                                 ["train.warmup = -5", "0 or more"]),
    "recipe: warm-up outlasts the run": (lambda w: ["validate", w.edit(("warmup = 0", "warmup = 50"))], 2,
                                         ["train.warmup = 50 is 50 warm-up steps, not fewer than the run's 3 steps"]),
    "recipe: batch larger than the data": (lambda w: ["validate", w.edit(("batch_size = 4", "batch_size = 64"))], 2,
                                           ["train.batch_size = 64 is larger than the 12 training slices"]),
    "recipe: duplicate key": (lambda w: ["validate", w.edit(("epochs = 1", "epochs = 1\nepochs = 2"))], 2,
                              ["key train.epochs is given twice"]),
    "recipe: duplicate table": (lambda w: ["validate", w.write("dup.toml", w.recipe.read_text() + "\n[train]\nlr = 1\n")],
                                2, ["table [train] appears twice"]),
    "recipe: not TOML": (lambda w: ["validate", w.write("bad.toml", "[train\nlr = 1\n")], 2,
                         ["bad.toml", "not valid TOML"]),
    "recipe: not UTF-8": (lambda w: ["validate", w.write("latin.toml", "# café\n".encode("latin-1"))], 2,
                          ["latin.toml", "not UTF-8 text (byte 5)"]),
    "recipe: a folder": (lambda w: ["validate", w.root], 2, ["is a folder; expected a recipe file"]),
    "recipe: missing file": (lambda w: ["validate", w.root / "nope.toml"], 2, ["nope.toml", "no such recipe file"]),
    "recipe: base cycle": (lambda w: ["validate", w.write("cycle.toml", 'base = "cycle.toml"\n')], 2,
                           ["base = 'cycle.toml' makes a cycle"]),
    "recipe: missing base": (lambda w: ["validate", w.write("child.toml", 'base = "gone.toml"\n')], 2,
                             ["gone.toml", "no such recipe file (base of"]),
    "recipe: base is a number": (lambda w: ["validate", w.write("num.toml", "base = 5\n")], 2,
                                 ["base = 5: expected the path of another recipe file, as a string"]),
    "recipe: base is a folder": (lambda w: ["validate", w.write("dot.toml", 'base = "."\n')], 2,
                                 ["is a folder; expected a recipe file"]),
    "recipe: a key of another task": (lambda w: ["validate", w.write("two.toml", w.recipe.read_text()
                                                                     + '\n[base_pretraining]\npretext = { name = "mae" }\n')],
                                       2, ["base_pretraining = ", "unknown key for task = 'segment'; it belongs to task = 'pretrain_base' recipes"]),
    "recipe: no task": (lambda w: ["validate", w.write("notask.toml", w.recipe.read_text().replace('task = "segment"', ""))],
                        2, ["task: required key is missing", '[decoder]: task = "segment"']),
    "recipe: missing plugin": (lambda w: ["validate", w.write("req.toml", w.recipe.read_text()
                                                              + '\n[plugins]\nrequire = ["jigsaw"]\n')], 2,
                               ["plugins.require: plugin 'jigsaw' is not installed"]),
    "recipe: fuser without experts": (lambda w: ["run", w.write("fuser.toml", w.recipe.read_text()
                                                                + '\n[fuser]\nname = "sum"\n')], 2,
                                      ["a fuser was given, but backbone.experts is not configured"]),
    "recipe: experts without a fuser": (lambda w: ["run", w.edit(("image_size = 64", 'image_size = 64\nexperts = '
                                                                  '{ names = ["image"] }'))], 2,
                                        ["backbone.experts ['image'] is configured, so a fuser is required"]),
    "recipe: duplicate expert names": (lambda w: ["validate", w.edit(("image_size = 64", 'image_size = 64\nexperts = '
                                                                     '{ names = ["a", "a"] }'))], 2,
                                       ["experts.names ['a', 'a'] repeats 'a'"]),
    # --- overrides ---------------------------------------------------------------------------------
    "override: no '='": (lambda w: ["validate", w.recipe, "train.lr"], 2, ["override 'train.lr': expected key.path=value"]),
    "override: through a value": (lambda w: ["validate", w.recipe, "train.lr.x=1"], 2, ["override train.lr.x", "not a table"]),
    "override: unknown key": (lambda w: ["validate", w.recipe, "train.lrr=0.1"], 2,
                              ["train.lrr = 0.1: unknown key (did you mean 'lr'?)"]),
    "override: wrong type": (lambda w: ["validate", w.recipe, "train.epochs=lots"], 2, ["train.epochs = 'lots'"]),
    "override: unknown device": (lambda w: ["validate", w.recipe, "run.device=gpu"], 2, ["run.device = 'gpu'"]),
    "override: unknown policy": (lambda w: ["validate", w.recipe, 'eval.policies=["loose"]'], 2, ["eval.policies.0 = 'loose'"]),
    "override: lora block out of range": (lambda w: ["validate", w.recipe, "backbone.lora.blocks=[9]"], 2,
                                          ["lora.blocks [9] out of range: tiny has blocks 0..3"]),
    "override: image size": (lambda w: ["validate", w.recipe, "backbone.image_size=100"], 2,
                             ["image_size 100 must be a positive multiple of 16"]),
    "override: unknown variant": (lambda w: ["validate", w.recipe, "backbone.variant=vit_x"], 2,
                                  ["backbone.variant = 'vit_x'"]),
    "override: unknown fuser order entry": (lambda w: ["run", w.recipe, 'backbone.experts={ names = ["image", "pixel"] }',
                                                       'fuser={ name = "hl_attn", order = ["pixel", "imag"], width = 8, heads = 2 }'],
                                            2, ["order entry 'imag' is not an expert"]),
    # --- data --------------------------------------------------------------------------------------
    "data: missing folder": (lambda w: ["run", w.recipe, f"data.root={w.root / 'nowhere'}"], 2,
                             ["data.root = '", "nowhere': no such file or folder"]),
    "data: no dataset.json": (lambda w: ["run", w.recipe, f"data.root={w.data_copy(lambda d: (d / 'dataset.json').unlink())}"],
                              2, ["dataset.json: no such file"]),
    "data: dataset.json not JSON": (lambda w: ["run", w.recipe, f"data.root={w.data_copy(lambda d: (d / 'dataset.json').write_text('{'))}"],
                                    2, ["dataset.json: not valid JSON"]),
    "data: dataset.json without labels": (lambda w: ["run", w.recipe, "data.root=" + str(w.data_copy(
        lambda d: (d / "dataset.json").write_text(json.dumps({"training": []}))))], 2, ["missing key 'labels'"]),
    "data: unknown case": (lambda w: ["run", w.recipe, 'data.train={ cases = ["case_009"] }'], 2,
                           ["unknown case id 'case_009' (did you mean 'case_002'?)"]),
    "data: label of another shape": (lambda w: ["run", w.recipe, "data.root=" + str(w.data_copy(
        lambda d: relabel(d, "case_001", array=np.zeros((5, 5, 5), np.uint8))))], 2, ["has shape (5, 5, 5); they must match voxel for voxel"]),
    "data: label value out of range": (lambda w: ["run", w.recipe, "data.root=" + str(w.data_copy(
        lambda d: relabel(d, "case_001", array=np.full((24, 24, 6), 7, np.uint8))))], 2, ["case_001.nii.gz: label values [7] are outside 0..2"]),
    "data: label off the image grid": (lambda w: ["run", w.recipe, "data.root=" + str(w.data_copy(
        lambda d: relabel(d, "case_001", affine=np.diag([3.0, 3.0, 1.0, 1.0]))))], 2,
                                       ["the label's geometry (spacing (3.0, 3.0, 1.0)", "differs from its image"]),
    "data: every label empty": (lambda w: ["run", w.recipe, "data.root=" + str(w.data_copy(lambda d: [
        relabel(d, c, array=np.zeros((24, 24, 6), np.uint8)) for c in ("case_000", "case_001")]))], 2,
                                ["every training label is empty"]),
    "data: truncated NIfTI": (lambda w: ["run", w.recipe, "data.root=" + str(w.data_copy(
        lambda d: _truncate(d / "labelsTr" / "case_001.nii.gz")))], 2, ["case_001.nii.gz", "unreadable or truncated"]),
    # --- weights -----------------------------------------------------------------------------------
    "weights: missing checkpoint": (lambda w: ["run", w.recipe, f"backbone.checkpoint={w.root / 'sam.safetensors'}"], 2,
                                    ["backbone.checkpoint = ", "sam.safetensors': no such file or folder"]),
    "weights: not safetensors": (lambda w: ["run", w.recipe, f"backbone.checkpoint={w.write('sam.safetensors', b'junk')}"],
                                 2, ["sam.safetensors: not a safetensors file"]),
    "weights: wrong sha256": (lambda w: ["run", w.recipe, f"backbone.checkpoint={w.done / 'weights.safetensors'}",
                                         f"backbone.checkpoint_sha256={'0' * 64}"], 2, ["expected 0000"]),
    "weights: bad sha256": (lambda w: ["validate", w.recipe, "backbone.checkpoint_sha256=xyz"], 2,
                            ["checkpoint_sha256 must be 64 hexadecimal characters"]),
    "weights: import garbage": (lambda w: ["weights", "import", w.write("x.pth", b"garbage"), w.root / "o.safetensors"], 2,
                                ["x.pth: cannot be loaded as a weights-only PyTorch checkpoint"]),
    "weights: import missing": (lambda w: ["weights", "import", w.root / "none.pth", w.root / "o.safetensors"], 2,
                                ["none.pth: no such checkpoint file"]),
    "weights: unknown import format": (lambda w: ["weights", "import", w.write("y.pth", b""), w.root / "o.safetensors",
                                                  "--format", "sam3"], 2,
                                       ["unknown checkpoint format 'sam3'; expected one of litemedsam, mobilesam, sam2, segment-anything"]),
    "weights: pack of another rank": (lambda w: ["run", w.recipe, 'backbone.experts={ names = ["image"], packs = '
                                                 f'{{ image = "{_pack(w, rank=2)}" }} }}', 'fuser={ name = "sum" }'], 2,
                                      ["lora.rank is 2 in pack", "the backbone uses 4"]),
    "weights: a weights file that is no pack": (lambda w: ["run", w.recipe, 'backbone.experts={ names = ["image"], packs = '
                                                           f'{{ image = "{w.done / "weights.safetensors"}" }} }}',
                                                           'fuser={ name = "sum" }'], 2, ["expected 'expert-pack'"]),
    # --- command line ------------------------------------------------------------------------------
    "cli: no processes": (lambda w: ["run", w.recipe, "--nproc-per-node", "0"], 2, ["start at least 1 process"]),
    "cli: rerun of another recipe into a finished folder": (lambda w: ["run", w.recipe, f"run.output_dir={w.done}"], 2,
                                                            ["already holds a run of another recipe; 1 key(s) differ",
                                                             "- eval.overlays: 0 in the run folder, 1 in this recipe"]),
    "cli: resume with another recipe": (lambda w: ["run", w.recipe, f"run.output_dir={w.done}", "train.lr=0.001",
                                                   "--resume"], 2, ["--resume: the recipe differs from",
                                                                    "- train.lr: 0.005 in the run folder, 0.001 in this recipe"]),
    "cli: resume with nothing to resume": (lambda w: ["run", w.recipe, "--resume"], 2, ["--resume", "does not exist; nothing to resume"]),
    "cli: output folder is a file": (lambda w: ["run", w.recipe, f"run.output_dir={w.write('file', 'x')}"], 2,
                                     ["is a file; run.output_dir must name a folder"]),
    "cli: evaluate a folder that is no run": (lambda w: ["evaluate", w.root], 2, ["not a run folder"]),
    "cli: compare a folder that is no run": (lambda w: ["compare", w.done, w.root], 2,
                                             ["eval/per_case.csv: missing; evaluate the run first"]),
    "cli: explain an unknown case": (lambda w: ["explain", w.done, "--case", "case_404", "--output", w.root / "x.png"], 2,
                                     ["no case 'case_404' (did you mean 'case_002'?)"]),
    "cli: predict a missing scan": (lambda w: ["predict", w.done, w.root / "scan.nii.gz", "--output", w.root / "p"], 2,
                                    ["scan.nii.gz: no such NIfTI file"]),
    "cli: predict two scans of one name": (lambda w: ["predict", w.done, w.root / "a" / "s.nii.gz", w.root / "b" / "s.nii.gz",
                                                      "--output", w.root / "p"], 2, ["would all be written to"]),
    "cli: schema into a folder": (lambda w: ["schema", "-o", w.root], 2, ["is a folder; expected the path of a file"]),
    "cli: convert an unknown kind": (lambda w: ["data", "convert", "acdc2", w.root, w.root / "out"], 2,
                                      ["unknown conversion 'acdc2'; expected one of la, promise12"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_one_clear_message_and_changes_nothing(case, world, capsys):
    build, code, words = CASES[case]
    protected = {folder: snapshot(folder) for folder in (world.done, world.data)}
    argv = [str(a) for a in build(world)]
    with torch.random.fork_rng():
        exit_code = main(argv)
    out, err = capsys.readouterr()
    err = " ".join(err.split())
    assert exit_code == code, (argv, out[-500:], err)
    assert "Traceback" not in err and "Traceback" not in out
    for word in words:
        assert word in err, (word, err)
    for folder, files in protected.items():
        assert snapshot(folder) == files, f"{case} changed {folder}"
