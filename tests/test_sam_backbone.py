"""SAM ViT backbone: presets, frozen encoder, LoRA, and loading 1024-px checkpoints at 224 px."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from segment_anything import sam_model_registry
from torch import nn

import samora_kit_plugins.sam as sam_plugin
from samora_kit.errors import CheckpointError
from samora_kit.interfaces import Backbone
from samora_kit.plugins import DISABLE_AUTOLOAD, load_plugins
from samora_kit.weights.io import load_weights, save_weights
from samora_kit_plugins.sam import (LoRAQKV, SamBackbone, SamBackboneConfig, build_image_encoder,
                                    build_sam_backbone)

from .test_weights_import import import_official_tiny


def tiny(**overrides) -> SamBackbone:
    return build_sam_backbone(SamBackboneConfig.model_validate({"variant": "tiny", "image_size": 64, **overrides}))


@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h"])
def test_presets_build_the_official_sam_encoders(variant):
    with torch.device("meta"):
        ours = build_image_encoder(variant, 1024).state_dict()
        official = sam_model_registry[variant]().image_encoder.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in official.items()}


def test_backbone_outputs_the_embedding_grid_and_satisfies_the_protocol():
    backbone = tiny(image_size=224)
    assert isinstance(backbone, Backbone) and backbone.variant == "tiny" and backbone.checkpoint_path is None
    assert (backbone.image_size, backbone.embed_channels, backbone.embed_grid) == (224, 64, 14)
    assert backbone(torch.rand(2, 3, 224, 224)).shape == (2, 64, 14, 14)


def test_forward_rejects_images_of_another_size():
    with pytest.raises(ValueError, match=r"expects images B,3,64,64; got \(1, 3, 96, 96\)"):
        tiny()(torch.rand(1, 3, 96, 96))


def test_lora_is_zero_at_init_so_output_equals_frozen_encoder():
    torch.manual_seed(0)
    frozen = build_image_encoder("tiny", 64)
    torch.manual_seed(0)
    backbone = tiny()
    images = torch.rand(2, 3, 64, 64)
    assert torch.equal(backbone(images), frozen(images))
    with torch.no_grad():
        backbone.lora_layers()[0].lora_b["q"].weight.normal_()
    assert not torch.allclose(backbone(images), frozen(images))


def test_only_lora_is_trainable():
    backbone = tiny()
    trainable = {n: p for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_a." in n or ".lora_b." in n for n in trainable)
    assert len(trainable) == 4 * 2 * 2  # 4 blocks x (A, B) x (q, v)
    assert set(backbone.trainable_state_dict()) == set(trainable)
    assert trainable["encoder.blocks.0.attn.qkv.lora_a.q.weight"].shape == (4, 96)
    assert trainable["encoder.blocks.0.attn.qkv.lora_b.v.weight"].shape == (96, 4)

    backbone(torch.rand(1, 3, 64, 64)).square().sum().backward()
    assert all(p.grad is None for n, p in backbone.named_parameters() if n not in trainable)
    assert trainable["encoder.blocks.3.attn.qkv.lora_b.v.weight"].grad.abs().sum() > 0


def test_lora_tensors_round_trip_through_the_trainable_state_dict():
    source, target = tiny(), tiny()
    with torch.no_grad():
        source.lora_layers()[1].lora_b["v"].weight.normal_()
    target.load_trainable_state_dict(source.trainable_state_dict())
    assert all(torch.equal(v, target.trainable_state_dict()[k]) for k, v in source.trainable_state_dict().items())
    with pytest.raises(CheckpointError, match="missing"):
        tiny(lora={"targets": ["q"]}).load_trainable_state_dict(source.trainable_state_dict())


def test_lora_rank_targets_and_blocks_are_configurable():
    backbone = tiny(lora={"rank": 2, "targets": ["k"], "blocks": [2, 0]})
    assert sorted(backbone.lora_layers()) == [0, 2]
    assert isinstance(backbone.encoder.blocks[1].attn.qkv, nn.Linear)
    layer = backbone.lora_layers()[2]
    assert layer.targets == ("k",) and layer.rank == 2
    assert sorted(backbone.trainable_state_dict()) == [
        f"encoder.blocks.{i}.attn.qkv.lora_{ab}.k.weight" for i in (0, 2) for ab in "ab"]


def test_lora_adds_its_delta_to_the_target_slices_only():
    qkv = nn.Linear(8, 24)
    lora = LoRAQKV(qkv, rank=2, targets=["v", "q"])
    nn.init.normal_(lora.lora_b["q"].weight)
    nn.init.normal_(lora.lora_b["v"].weight)
    x = torch.randn(2, 3, 3, 8)  # B, H, W, C as SAM's attention passes it
    q, k, v = lora(x).split(8, dim=-1)
    base_q, base_k, base_v = qkv(x).split(8, dim=-1)
    assert torch.allclose(q, base_q + lora.lora_b["q"](lora.lora_a["q"](x)))
    assert torch.equal(k, base_k)
    assert torch.allclose(v, base_v + lora.lora_b["v"](lora.lora_a["v"](x)))
    assert lora.lora_a["q"].bias is None and not qkv.weight.requires_grad


def test_lora_blocks_out_of_range_is_a_clear_error():
    with pytest.raises(ValidationError, match=r"lora\.blocks \[4\] out of range: tiny has blocks 0\.\.3"):
        SamBackboneConfig(variant="tiny", lora={"blocks": [0, 4]})


def test_image_size_must_be_a_multiple_of_16():
    with pytest.raises(ValidationError, match="image_size 200 must be a positive multiple of 16"):
        SamBackboneConfig(image_size=200)


def test_import_official_layout_checkpoint_and_resize_positions(tmp_path):
    path, original = import_official_tiny(tmp_path)
    backbone = tiny(image_size=224, checkpoint=path)
    loaded = backbone.encoder.state_dict()

    expected_pos = F.interpolate(original["image_encoder.pos_embed"].permute(0, 3, 1, 2), size=(14, 14),
                                 mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    assert torch.allclose(loaded["pos_embed"], expected_pos)
    for block in (1, 3):  # global attention: 2*64-1 -> 2*14-1 rows
        for axis in "hw":
            rel = original[f"image_encoder.blocks.{block}.attn.rel_pos_{axis}"]
            expected = F.interpolate(rel[None, None], size=(27, rel.shape[1]), mode="bilinear",
                                     align_corners=False)[0, 0]
            assert torch.allclose(loaded[f"blocks.{block}.attn.rel_pos_{axis}"], expected)
    for block in (0, 2):  # windowed attention keeps its 2*7-1 rows
        for axis in "hw":
            key = f"blocks.{block}.attn.rel_pos_{axis}"
            assert torch.equal(loaded[key], original[f"image_encoder.{key}"])
    assert torch.equal(loaded["blocks.2.attn.qkv.base.weight"], original["image_encoder.blocks.2.attn.qkv.weight"])
    assert torch.equal(loaded["neck.2.weight"], original["image_encoder.neck.2.weight"])
    assert backbone.checkpoint_path == path
    assert backbone(torch.rand(1, 3, 224, 224)).shape == (1, 64, 14, 14)


def test_checkpoint_sha256_from_config_or_sidecar_is_verified(tmp_path):
    path, _ = import_official_tiny(tmp_path)
    with pytest.raises(CheckpointError, match="sha256 is"):
        tiny(checkpoint=path, checkpoint_sha256="0" * 64)
    path.with_name(path.name + ".sha256").write_text(f"{'0' * 64}  {path.name}\n")
    with pytest.raises(CheckpointError, match="sha256 is"):
        tiny(checkpoint=path)


def test_checkpoint_of_other_architecture_is_refused_with_key_and_shapes(tmp_path):
    path, _ = import_official_tiny(tmp_path)
    tensors, header = load_weights(path)

    with pytest.raises(CheckpointError, match=r"sam_tiny\.safetensors: header variant is 'tiny'.*'vit_b'"):
        build_sam_backbone(SamBackboneConfig(variant="vit_b", image_size=64, checkpoint=path))

    wider = dict(tensors, **{"image_encoder.neck.0.weight": torch.zeros(64, 128, 1, 1)})
    save_weights(tmp_path / "wider.safetensors", wider, header)
    with pytest.raises(CheckpointError, match=r"wider\.safetensors: image_encoder\.neck\.0\.weight has shape "
                                              r"\(64, 128, 1, 1\), expected \(64, 96, 1, 1\)"):
        tiny(checkpoint=tmp_path / "wider.safetensors")

    other_window = dict(tensors, **{"image_encoder.blocks.0.attn.rel_pos_h": torch.zeros(27, 32)})
    save_weights(tmp_path / "window14.safetensors", other_window, header)
    with pytest.raises(CheckpointError, match=r"blocks\.0\.attn\.rel_pos_h has shape \(27, 32\), expected \(13, 32\)"):
        tiny(checkpoint=tmp_path / "window14.safetensors")

    shallower = {k: v for k, v in tensors.items() if not k.startswith("image_encoder.blocks.3.")}
    save_weights(tmp_path / "shallow.safetensors", shallower, {})
    with pytest.raises(CheckpointError, match=r"shallow\.safetensors: missing image_encoder\.blocks\.3\."):
        tiny(checkpoint=tmp_path / "shallow.safetensors")


def test_sam_backbone_is_registered_with_a_working_example(monkeypatch):
    monkeypatch.setenv(DISABLE_AUTOLOAD, "1")
    spec = load_plugins(extra=[sam_plugin]).registry.get("backbone", "sam")
    backbone = spec.build(spec.example)
    assert isinstance(backbone, SamBackbone) and backbone.embed_grid == 4


def test_sam_backbone_is_a_pretrainable_backbone():
    from samora_kit.interfaces import PretrainableBackbone

    backbone = tiny()
    assert isinstance(backbone, PretrainableBackbone)
    assert backbone.token_channels == 96 and backbone.block_channels == [96] * 4
    assert backbone.default_skip_blocks() == [0, 1, 2]
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        tokens = backbone.tokens(images)
        assert tokens.shape == (2, 4, 4, 96)
        assert torch.allclose(backbone.encoder.neck(tokens.permute(0, 3, 1, 2)), backbone(images))
        out, blocks = backbone.block_outputs(images, [3, 1])
        assert torch.equal(out, backbone(images)) and torch.equal(blocks[0], tokens)
        assert blocks[1].shape == (2, 4, 4, 96)
    assert not any(b._forward_hooks for b in backbone.encoder.blocks)
    with pytest.raises(ValueError, match=r"expects images B,3,64,64; got \(1, 3, 96, 96\)"):
        backbone.tokens(torch.rand(1, 3, 96, 96))
    with pytest.raises(ValueError, match="block 4 out of range"):
        backbone.block_outputs(images, [4])


@pytest.mark.parametrize("variant, skips", [("vit_b", [2, 5, 8]), ("vit_l", [5, 11, 17]), ("vit_h", [7, 15, 23])])
def test_default_skip_blocks_end_each_quarter_of_the_depth(variant, skips):
    backbone = SamBackbone.__new__(SamBackbone)  # only the variant matters: no 1024-px build
    backbone.variant = variant
    assert backbone.default_skip_blocks() == skips
