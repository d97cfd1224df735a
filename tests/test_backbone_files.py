"""What the SAM and SAM2 backbones write for pre-training (plugins/lora/backbone_files.py): an expert pack
of their LoRA, the whole encoder made trainable, and the encoder exported as a checksummed base."""

from __future__ import annotations

import pytest
import torch

from samora_kit.errors import CheckpointError, SamoraError
from samora_kit.interfaces import FeaturePyramid
from samora_kit.weights.checksummed import sidecar_digest
from samora_kit.weights.io import read_header
from samora_kit_plugins.lora.expert_pack import load_expert_pack
from samora_kit_plugins.sam import SamBackboneConfig, build_sam_backbone
from samora_kit_plugins.sam2 import Sam2BackboneConfig, build_sam2_backbone

from .test_experts import SumFuser

BACKBONES = {"sam": (SamBackboneConfig, build_sam_backbone, "segment_anything", "sam-encoder"),
             "sam2": (Sam2BackboneConfig, build_sam2_backbone, "sam2", "sam2-encoder")}
PROVENANCE = {"pretext": "simclrv2", "teacher": "simclrv2_resnet", "teacher_cpt": True, "data_fingerprint": "d1"}
ATOL = 1e-5


def tiny(name: str, seed: int = 0, fuser=None, **overrides):
    """A tiny backbone whose frozen base depends only on `seed`."""
    if name == "sam2":
        pytest.importorskip("sam2", reason="sam2 is an optional extra")
    config_model, build, _, _ = BACKBONES[name]
    torch.manual_seed(seed)
    return build(config_model.model_validate({"variant": "tiny", "image_size": 64, **overrides}), fuser=fuser)


def features(out) -> list[torch.Tensor]:
    return [out.embedding, *out.high_res] if isinstance(out, FeaturePyramid) else [out]


def trained_lora(backbone) -> None:
    with torch.no_grad():
        for layer in backbone.lora_layers().values():
            for factor in layer.lora_b.values():
                factor.weight.normal_(std=0.2)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_written_pack_loads_onto_a_fresh_backbone_with_the_same_base_and_gives_the_same_outputs(name, tmp_path):
    stage1 = tiny(name)
    trained_lora(stage1)
    extra = {"recipe_fingerprint": "r1", "steps": 3, "final_loss": 0.25}
    path = stage1.write_expert_pack(tmp_path / "image.safetensors", "image", provenance=PROVENANCE, extra_header=extra)

    header = load_expert_pack(path).header
    assert {k: header[k] for k in (*PROVENANCE, *extra)} == {**PROVENANCE, **extra}
    assert header["base_fingerprint"] == stage1.base_fingerprint()
    package = BACKBONES[name][2]  # the package the architecture really comes from, and only that one
    other = "sam2" if package == "segment_anything" else "segment_anything"
    assert package in header["versions"] and other not in header["versions"]

    fresh = tiny(name, fuser=SumFuser, experts={"names": ["image"], "packs": {"image": str(path)}})
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        for mine, theirs in zip(features(fresh(images)), features(stage1(images))):
            assert torch.allclose(mine, theirs, atol=ATOL)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_write_expert_pack_refuses_unknown_provenance_and_a_header_it_would_overwrite(name, tmp_path):
    backbone = tiny(name)
    with pytest.raises(TypeError, match=r"unknown provenance \['versions'\]"):
        backbone.write_expert_pack(tmp_path / "a.safetensors", "image", provenance={"versions": {}}, extra_header={})
    with pytest.raises(ValueError, match=r"extra_header may not set \['lora'\]"):
        backbone.write_expert_pack(tmp_path / "a.safetensors", "image", provenance={}, extra_header={"lora": 1})
    assert not (tmp_path / "a.safetensors").exists()


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_train_whole_encoder_trains_every_encoder_weight_and_freezes_the_lora(name):
    backbone = tiny(name)
    backbone.train_whole_encoder()
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    lora = {n for n, _ in backbone.named_parameters() if ".lora_" in n}
    assert lora and not trainable & lora
    assert trainable == {n for n, _ in backbone.named_parameters()} - lora
    if name == "sam2":  # the FPN neck belongs to the image encoder too
        assert any(n.startswith("neck.") for n in trainable)
    with pytest.raises(SamoraError, match="stage-2 experts"):
        tiny(name, fuser=SumFuser, experts={"names": ["image"]}).train_whole_encoder()


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_exported_encoder_loads_as_the_checkpoint_of_a_new_backbone(name, tmp_path):
    backbone = tiny(name, seed=1)
    trained_lora(backbone)  # the LoRA is not part of the encoder: it must not leak into the file
    path = tmp_path / "base.safetensors"
    digest = backbone.export_encoder(path, {"origin": "self-pre-trained", "pretext": "mae", "steps": 4})

    header = read_header(path)
    assert header["format"] == BACKBONES[name][3] and header["variant"] == "tiny"
    assert header["source_image_size"] == 64 and header["origin"] == "self-pre-trained" and header["steps"] == 4
    assert sidecar_digest(path) == digest

    loaded = tiny(name, seed=2, checkpoint=str(path), checkpoint_sha256=digest)
    own = backbone.encoder_state_in_official_layout()
    theirs = loaded.encoder_state_in_official_layout()
    assert set(theirs) == set(own) and all(torch.equal(theirs[k], v) for k, v in own.items())
    with pytest.raises(CheckpointError, match="sha256 is .* expected 0{64}"):
        tiny(name, checkpoint=str(path), checkpoint_sha256="0" * 64)
    with pytest.raises(ValueError, match=r"header sets \['format'\]"):
        backbone.export_encoder(path, {"format": "segment-anything"})
