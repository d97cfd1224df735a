"""A base encoder pre-trained by the kit itself, then used as a backbone checkpoint."""

import json
from pathlib import Path

import pytest
import torch

from samora_kit.cli import main
from samora_kit.plugins import default_registry
from samora_kit.runner import run
from samora_kit.weights.io import load_weights, read_header

from .synthetic import pool_recipe, snapshot, tiny_recipe, write_decathlon

pytestmark = pytest.mark.slow


def _base_recipe(tmp_path: Path, data: Path) -> Path:
    path = tmp_path / "base.toml"
    path.write_text(pool_recipe(data, tmp_path / "base", seed=5, max_steps=4,
                                tail='\n[base_pretraining]\npretext = { name = "mae", hidden_dim = 32 }\n'))
    return path


def test_base_encoder_is_self_pretrained_and_loads_as_a_backbone(tmp_path):
    data = write_decathlon(tmp_path / "data", n_cases=3)
    run(_base_recipe(tmp_path, data), [], False, ["test"], show_progress=False)
    base = tmp_path / "base" / "base.safetensors"
    header = read_header(base)
    assert header["origin"] == "self-pre-trained" and header["format"] == "sam-encoder"
    assert "SAM" not in header["origin"] and header["steps"] == 4
    assert Path(f"{base}.sha256").read_text().split()[0]
    first = json.loads((tmp_path / "base" / "metrics.jsonl").read_text().splitlines()[0])
    assert "lr" in first and "lr_lora" not in first  # the encoder trains at train.lr; its zero LoRA stays frozen

    tensors, _ = load_weights(base)
    torch.manual_seed(5)  # the random encoder the base run started from
    untrained = default_registry().get("backbone", "sam").build({"variant": "tiny", "image_size": 64})
    start = untrained.encoder_state_in_official_layout()
    assert set(tensors) == set(start)
    assert any(not torch.equal(tensors[k], start[k]) for k in tensors if ".attn.qkv." in k)  # it learned

    loaded = default_registry().get("backbone", "sam").build(
        {"variant": "tiny", "image_size": 64, "checkpoint": str(base)})
    for key, value in loaded.encoder_state_in_official_layout().items():
        assert torch.equal(value, tensors[key]), key

    recipe = tmp_path / "samed.toml"  # SAMed on top: the decoder starts fresh, the encoder from the base
    recipe.write_text(tiny_recipe(data, tmp_path / "samed", ["case_000"], ["case_001"], epochs=1)
                      .replace("image_size = 64\n", f'image_size = 64\ncheckpoint = "{base}"\n'))
    run(recipe, [], False, ["test"], show_progress=False)
    assert (tmp_path / "samed" / "eval" / "summary.json").exists()

    for decoder in ("samed", "hsam"):  # both SAM decoders start fresh on a base that holds no decoder
        built = default_registry().get("decoder", decoder).build({}, backbone=loaded, num_classes=2)
        assert built.num_classes == 2


def test_rerun_of_a_finished_base_pretraining_reports_it_and_writes_nothing(tmp_path, capsys):
    data = write_decathlon(tmp_path / "data", n_cases=2)
    recipe, run_dir = _base_recipe(tmp_path, data), tmp_path / "base"
    assert main(["run", str(recipe), "train.max_steps=2"]) == 0
    capsys.readouterr()
    before = snapshot(run_dir)
    for flags, said in (([], ""), (["--resume"], "--resume: nothing to resume, ")):
        assert main(["run", str(recipe), "train.max_steps=2", *flags]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert f"{said}{run_dir} is finished (2 steps, this recipe); nothing is trained or written again" in out
        assert f'use it with backbone.checkpoint = "{run_dir / "base.safetensors"}" (sha256 ' in out
        assert "final loss" not in out
        assert snapshot(run_dir) == before
    assert main(["run", str(recipe), "train.max_steps=3"]) == 2  # another recipe: refused, naming the key
    assert "- train.max_steps: 2 in the run folder, 3 in this recipe" in " ".join(capsys.readouterr().err.split())
    assert snapshot(run_dir) == before
