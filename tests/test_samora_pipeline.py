"""SAMora end to end: stage 1 experts -> packs -> stage 2 fused model, chained and reused."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from samora_kit.plugins import default_registry
from samora_kit.recipe import load_recipe
from samora_kit.flows.segment import load_run
from samora_kit.runner import run
from samora_kit.train.model import build_model
from samora_kit_plugins.lora.expert_pack import load_expert_pack

from .synthetic import STAGE1_EXPERTS, pool_recipe, tiny_recipe, write_decathlon

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _stage1_recipe(tmp_path: Path, data: Path) -> Path:
    path = tmp_path / "pretrain.toml"
    # seed 7, as tiny_recipe's stage 2: the same random base (packs refuse another one)
    path.write_text(pool_recipe(data, tmp_path / "pretrain", seed=7, max_steps=3, tail=STAGE1_EXPERTS))
    return path


FUSERS = {"hl_attn": 'name = "hl_attn"\norder = ["pixel", "patch", "image"]\nwidth = 32\nheads = 4',
          "sum": 'name = "sum"'}


def _stage2_recipe(tmp_path: Path, data: Path, stage1: Path, name: str, fuser: str = "hl_attn") -> Path:
    text = tiny_recipe(data, tmp_path / name, ["case_000", "case_001"], ["case_002"], epochs=1)
    text = text.replace("image_size = 64\n", 'image_size = 64\nexperts = { names = ["image", "patch", "pixel"] }\n')
    text += f"\n[fuser]\n{FUSERS[fuser]}\n\n[pretrain]\nrecipe = \"{stage1}\"\n"
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def chained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("samora")
    data = write_decathlon(tmp_path / "data", n_cases=4)
    stage1 = _stage1_recipe(tmp_path, data)
    first = _stage2_recipe(tmp_path, data, stage1, "first")
    run(first, [], False, ["test"], show_progress=False)
    return tmp_path, data, stage1


def test_chained_run_writes_one_expert_pack_per_level(chained):
    tmp_path, _, _ = chained
    packs = sorted(p.name for p in (tmp_path / "pretrain" / "experts").glob("*.safetensors"))
    assert packs == ["image.safetensors", "patch.safetensors", "pixel.safetensors"]
    resolved = (tmp_path / "first" / "recipe.resolved.toml").read_text()
    assert str(tmp_path / "pretrain" / "experts" / "pixel.safetensors") in resolved


def test_second_stage2_run_reuses_finished_experts(chained, capsys):
    tmp_path, data, stage1 = chained
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "pretrain" / "experts").iterdir()}
    run(_stage2_recipe(tmp_path, data, stage1, "second", fuser="sum"), [], False, ["test"], show_progress=False)
    assert "reusing" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_encoder_and_expert_weights_are_bit_identical_after_stage2(chained):
    tmp_path, _, _ = chained
    registry = default_registry()
    recipe = load_recipe(tmp_path / "first.toml", registry)
    recipe.backbone.experts.packs = {n: tmp_path / "pretrain" / "experts" / f"{n}.safetensors"
                                     for n in recipe.backbone.experts.names}
    torch.manual_seed(recipe.run.seed)
    untrained = build_model(recipe, registry, num_classes=2).backbone.state_dict()
    _, _, trained = load_run(tmp_path / "first")
    after = trained.backbone.state_dict()
    frozen = [k for k in untrained if ".fuser." not in k]
    assert any("expert_a" in k for k in frozen)
    for key in frozen:
        assert torch.equal(untrained[key], after[key]), key
    assert any(not torch.equal(untrained[k], after[k]) for k in untrained if ".fuser." in k)


def test_hl_attn_stage2_starts_exactly_on_the_frozen_path():
    registry = default_registry()
    torch.manual_seed(0)
    fuser = registry.get("fuser", "hl_attn")
    fused = registry.get("backbone", "sam").build(
        {"variant": "tiny", "image_size": 64, "experts": {"names": ["image", "patch", "pixel"]}},
        fuser=lambda dim, num_heads, names: fuser.build({"width": 32, "heads": 4}, dim=dim,
                                                        num_heads=num_heads, expert_names=names))
    for layer in fused.expert_layers().values():  # experts that really change the attention
        layer.expert_b.normal_()
    plain = registry.get("backbone", "sam").build({"variant": "tiny", "image_size": 64})
    plain.encoder.load_state_dict(fused.encoder.state_dict(), strict=False)
    for index, lora in plain.lora_layers().items():
        lora.base.load_state_dict(fused.expert_layers()[index].base.state_dict())
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fused(images), plain(images), rtol=0, atol=1e-5)


ROTATION_PLUGIN = '''
"""A third-party pretext level: predict which of four rotations an image was given."""
import torch
from samora_kit.hookspecs import hookimpl
from samora_kit.registry import ComponentConfig


class RotationConfig(ComponentConfig):
    hidden: int = 16


class RotationPretext(torch.nn.Module):
    def __init__(self, backbone, hidden):
        super().__init__()
        self.backbone = backbone
        self.head = torch.nn.Sequential(torch.nn.Linear(backbone.embed_channels, hidden), torch.nn.GELU(),
                                        torch.nn.Linear(hidden, 4))

    def forward(self, images):
        turns = torch.randint(0, 4, (images.shape[0],), device=images.device)
        rotated = torch.stack([torch.rot90(im, int(k), dims=(1, 2)) for im, k in zip(images, turns)])
        logits = self.head(self.backbone(rotated).mean(dim=(2, 3)))
        return {"loss": torch.nn.functional.cross_entropy(logits, turns)}


def build_rotation(config, *, backbone, teacher=None):
    """Rotation prediction (a pretext level from a third-party plugin)."""
    return RotationPretext(backbone, config.hidden)


@hookimpl
def samora_kit_register(registry):
    registry.add("pretext", "rotation", RotationConfig, build_rotation)
'''


def test_third_party_pretext_level_trains_an_expert_from_a_recipe(tmp_path):
    from .test_cli import _install

    site = tmp_path / "site"
    _install(site, "samora_rotation", ROTATION_PLUGIN, "samora-rotation")
    data = write_decathlon(tmp_path / "data", n_cases=2)
    recipe = _stage1_recipe(tmp_path, data)
    text = recipe.read_text()
    recipe.write_text(text[:text.index("[[experts]]")] + '[plugins]\nrequire = ["samora_rotation"]\n\n'
                      '[[experts]]\nname = "orientation"\npretext = { name = "rotation", hidden = 8 }\n')
    result = subprocess.run([sys.executable, "-m", "samora_kit.cli", "run", str(recipe)], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(site),
                                                         "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    pack = load_expert_pack(tmp_path / "pretrain" / "experts" / "orientation.safetensors")
    assert pack.header["pretext"] == "rotation" and pack.header["expert"] == "orientation"
    assert any(t.abs().sum() > 0 for k, t in pack.tensors.items() if "lora_b" in k)  # the LoRA moved
