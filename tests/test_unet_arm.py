"""The few-shot benchmark's "what a user would pick instead" arm: MONAI's U-Net trained from scratch
(backbone `unet`, decoder `conv_head`) through the same segment flow as the SAM arms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from samora_kit.plugins import default_registry
from samora_kit.recipe import load_recipe
from samora_kit.runner import run
from samora_kit.train.losses import DiceCELoss
from samora_kit.train.model import SegmentationObjective, build_model
from samora_kit.weights.io import load_weights

REPO = Path(__file__).resolve().parents[1]
RECIPES = [REPO / "recipes" / "fewshot" / f"{name}_unet.toml" for name in ("hippocampus", "acdc")]
TINY = ["backbone.image_size=32", "backbone.channels=[4, 8, 8, 16, 16]", "backbone.num_res_units=1",
        "backbone.out_features=4"]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_the_recipe_switches_to_the_unet_and_keeps_the_samed_arms_data_train_and_eval(recipe):
    registry = default_registry()
    unet = load_recipe(recipe, registry)
    samed = load_recipe(recipe.with_name(recipe.name.replace("_unet", "_samed")), registry)
    assert (unet.backbone.name, unet.decoder.name, unet.backbone.image_size) == ("unet", "conv_head", 128)
    assert unet.data.model_dump() == samed.data.model_dump() and unet.eval.model_dump() == samed.eval.model_dump()
    assert unet.train.model_dump(exclude={"lr"}) == samed.train.model_dump(exclude={"lr"})
    assert unet.train.lr == 1e-3


def test_logits_come_at_the_image_size_the_loss_reads_and_gradients_reach_every_unet_weight():
    recipe = load_recipe(RECIPES[0], default_registry(), TINY)
    model = build_model(recipe, default_registry(), num_classes=2).train()
    images, labels = torch.rand(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    logits = model(images)
    assert logits.shape == (2, 3, 32, 32)  # B, K+1, S, S: the loss takes the labels as they are
    assert model.predict(images).shape == (2, 32, 32)
    SegmentationObjective(model, DiceCELoss(2))(images, labels)["loss"].backward()
    params = dict(model.named_parameters())
    assert all(p.requires_grad for p in params.values())  # trained from scratch: nothing is frozen
    assert set(model.backbone.trainable_state_dict()) == {n.removeprefix("backbone.") for n in params
                                                          if n.startswith("backbone.")}
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params.values())
    # every kernel learns (a conv bias that an instance norm follows is cancelled by it: MONAI's default)
    dead = [n for n, p in params.items() if p.dim() > 1 and not p.grad.abs().sum() > 0]
    assert not dead
    assert params["decoder.head.conv.conv.bias"].grad.abs().sum() > 0


def test_a_two_step_run_of_the_recipe_trains_saves_and_evaluates(hippocampus, tmp_path):
    overrides = [f"run.output_dir={tmp_path / 'run'}", "run.device=cpu", *TINY, "train.epochs=1",
                 "train.max_steps=2", "train.batch_size=2", "train.warmup=0", "eval.overlays=0", "data.test.count=1"]
    run_dir = run(RECIPES[0], overrides, False, ["test"], console=Console(quiet=True), show_progress=False)
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    assert set(summary) >= {"transunet", "strict"}
    tensors, header = load_weights(run_dir / "weights.safetensors")
    assert (header["backbone"], header["decoder"]) == ("unet", "conv_head")
    assert any(n.startswith("backbone.unet.") for n in tensors) and "decoder.head.conv.conv.weight" in tensors
    from samora_kit.cli import main  # explain's Grad-CAM reads the U-Net's full-resolution map (the head's input)
    from samora_kit.flows.segment import load_run

    case = load_run(run_dir)[1].cases("test")[0]
    png = tmp_path / "explain.png"
    assert main(["explain", str(run_dir), "--case", case, "--output", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
