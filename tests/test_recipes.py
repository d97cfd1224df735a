"""Every model recipe of the paper's tables runs: each one for a few steps with tiny backbones on
synthetic data in its data set's real layout (Synapse, LA, PROMISE12). (`test_cli` validates every
shipped recipe.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from rich.console import Console

from samora_kit.cli import main
from samora_kit.plugins import default_registry
from samora_kit.recipe import load_recipe
from samora_kit.runner import run
from samora_kit.weights.imports import import_checkpoint
from samora_kit_plugins.decoders.samed2 import Samed2Decoder, official_key
from samora_kit_plugins.sam_weights import save_sam_layout
from samora_kit_plugins.sam import SamBackboneConfig, build_sam_backbone
from samora_kit_plugins.sam2 import Sam2BackboneConfig, build_sam2_backbone

from .synthetic import make_synapse, write_decathlon, write_la_case, write_p12_case

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
MODELS = ["samed", "samora", "h_sam", "h_samora", "samed2", "samora2"]
SETTINGS = ["", "synapse_10pct", "la_5pct", "promise12_7pct"]  # "": full Synapse (the top-level recipes)
MODEL_RECIPES = [RECIPES / setting / f"{model}.toml" for setting in SETTINGS for model in MODELS]
SIZE = 64


def test_every_model_row_of_the_paper_has_a_recipe():
    missing = [str(p.relative_to(REPO)) for p in MODEL_RECIPES if not p.is_file()]
    assert not missing


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Synthetic data folders, tiny backbone checkpoints and tiny stage-1 recipes for both hosts."""
    root = tmp_path_factory.mktemp("recipes")
    synapse = make_synapse(root / "synapse")
    for n, case in enumerate(["A1", "A2", "T1"]):
        write_la_case(root / "la", case, seed=n)
    for n, case in enumerate(["Case05", "Case12"]):
        write_p12_case(root / "promise12", case, seed=n)
    pool = write_decathlon(root / "pool", n_cases=2, shape=(24, 24, 4))
    torch.manual_seed(0)
    sam = build_sam_backbone(SamBackboneConfig(variant="tiny", image_size=SIZE))
    sam_file, _ = save_sam_layout(root / "sam_tiny.safetensors", sam.encoder_state_in_official_layout(),
                                  {"format": "sam-encoder", "origin": "self-pre-trained", "variant": "tiny"})
    sam2_file = tiny_sam2_checkpoint(root / "sam2_tiny")
    hosts = {"sam": sam_file, "sam2": sam2_file}
    stage1 = {name: stage1_recipe(root / f"stage1_{name}.toml", root / f"stage1-{name}", name, path, pool)
              for name, path in hosts.items()}
    return {"root": root, "synapse": synapse, "la": root / "la", "promise12": root / "promise12",
            "checkpoints": hosts, "stage1": stage1}


def tiny_sam2_checkpoint(folder: Path) -> Path:
    """A tiny SAM2 in the official `.pt` layout (image encoder + mask decoder heads), imported as users do."""
    folder.mkdir()
    backbone = build_sam2_backbone(Sam2BackboneConfig(variant="tiny", image_size=SIZE))
    decoder = Samed2Decoder(1, backbone.embed_channels, backbone.embed_grid, SIZE)
    state = dict(backbone.encoder_state_in_official_layout())
    state.update({official_key(k): v for k, v in decoder.state_dict().items()})
    torch.save({"model": state}, folder / "sam2_tiny.pt")
    out, _ = import_checkpoint(folder / "sam2_tiny.pt", folder / "sam2_tiny.safetensors", format="sam2")
    return out


def stage1_recipe(path: Path, run_dir: Path, host: str, checkpoint: Path, pool: Path) -> Path:
    path.write_text(f"""
task = "pretrain_experts"

[run]
name = "{run_dir.name}"
output_dir = "{run_dir}"
seed = 3
device = "cpu"

[backbone]
name = "{host}"
variant = "tiny"
image_size = {SIZE}
checkpoint = "{checkpoint}"

[data]
name = "unlabelled_pool"
root = "{pool}"
subdir = "imagesTr"

[train]
epochs = 1
batch_size = 2
max_steps = 1
warmup = 0

[[experts]]
name = "image"
pretext = {{ name = "simclrv2", hidden_dim = 16, projection_dim = 8 }}

[[experts]]
name = "patch"
pretext = {{ name = "mae", hidden_dim = 16 }}

[[experts]]
name = "pixel"
pretext = {{ name = "denoise", decoder_channels = [8, 8, 8, 8] }}
""")
    return path


TEST_CASE = {"synapse": "case0001", "la": "T1", "promise12": "Case12"}
DATA_OVERRIDES = {  # a recipe's data set -> where the synthetic copy is and which few cases to use
    "synapse": lambda w: [f"data.root={w['synapse']}", "data.list_dir=lists"],
    "la": lambda w: [f"data.root={w['la']}", 'data.train={ cases = ["A1", "A2"] }', 'data.test={ cases = ["T1"] }'],
    "promise12": lambda w: [f"data.root={w['promise12']}", 'data.train={ cases = ["Case05"] }',
                            'data.test={ cases = ["Case12"] }'],
}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", MODEL_RECIPES, ids=lambda p: str(p.relative_to(RECIPES)))
def test_model_recipe_runs_a_few_steps(recipe, world, tmp_path):
    registry = default_registry()
    real = load_recipe(recipe, registry)
    host = real.backbone.name
    overrides = [f"run.output_dir={tmp_path / 'run'}", "run.device=cpu", "backbone.variant=tiny",
                 f"backbone.image_size={SIZE}", f"backbone.checkpoint={world['checkpoints'][host]}",
                 "train.epochs=1", "train.max_steps=2", "train.batch_size=2", "train.warmup=0",
                 "eval.overlays=0", *DATA_OVERRIDES[real.data.name](world)]
    if real.data.name == "synapse" and real.data.train is not None:  # the 10 % list -> a 2-slice list
        overrides.append(f'data.train={{ list_file = "{world["synapse"] / "lists" / "train_2.txt"}" }}')
    if real.fuser is not None:
        overrides += ["fuser.width=16", "fuser.heads=2"]
    if real.pretrain is not None:
        overrides.append(f"pretrain.recipe={world['stage1'][host]}")
    run_dir = run(recipe, overrides, False, ["test"], console=Console(quiet=True), show_progress=False)
    assert (run_dir / "weights.safetensors").is_file()
    assert (run_dir / "eval" / "summary.json").is_file()
    png = tmp_path / "explain.png"  # the Fig. 5 heat map works on every host and decoder
    assert main(["explain", str(run_dir), "--case", TEST_CASE[real.data.name], "--output", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
