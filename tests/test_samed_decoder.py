"""SAMed decoder: prompt-free, batched, num_classes + 1 low-res masks, SAM weights minus class heads."""

from __future__ import annotations

import pytest
import torch

import samora_kit_plugins.decoders.samed as samed_plugin
import samora_kit_plugins.sam as sam_plugin
from samora_kit.errors import CheckpointError
from samora_kit.interfaces import Decoder
from samora_kit.plugins import DISABLE_AUTOLOAD, load_plugins
from samora_kit_plugins.decoders.samed import (SamedDecoder, SamedDecoderConfig, build_samed_decoder,
                                               default_mlp_dim, default_num_heads)
from samora_kit_plugins.sam import SamBackboneConfig, build_sam_backbone

from .test_weights_import import import_official_tiny


def tiny_backbone(image_size: int = 64, **overrides):
    return build_sam_backbone(SamBackboneConfig(variant="tiny", image_size=image_size, **overrides))


def decoder_for(backbone, num_classes: int = 3, **config) -> SamedDecoder:
    return build_samed_decoder(SamedDecoderConfig(**config), backbone=backbone, num_classes=num_classes)


@pytest.mark.parametrize("image_size, grid", [(64, 4), (224, 14)])
def test_output_is_num_classes_plus_one_low_res_logits_for_a_batch(image_size, grid):
    decoder = decoder_for(tiny_backbone(image_size), num_classes=3)
    assert isinstance(decoder, Decoder) and decoder.num_classes == 3
    assert decoder(torch.randn(3, 64, grid, grid)).shape == (3, 4, 4 * grid, 4 * grid)


def test_each_image_in_a_batch_is_decoded_independently():
    decoder = decoder_for(tiny_backbone(), num_classes=2)
    embeddings = torch.randn(4, 64, 4, 4)
    batched = decoder(embeddings)
    alone = torch.cat([decoder(e[None]) for e in embeddings])
    assert torch.allclose(batched, alone, atol=1e-5)


def test_single_image_output_equals_segment_anything_prompt_free_decoding():
    decoder = decoder_for(tiny_backbone(), num_classes=2)
    embedding = torch.randn(1, 64, 4, 4)
    sparse, dense = decoder.prompt_encoder(points=None, boxes=None, masks=None)
    reference, _ = decoder.mask_decoder.predict_masks(embedding, decoder.prompt_encoder.get_dense_pe(),
                                                      sparse, dense)
    assert torch.allclose(decoder(embedding), reference, atol=1e-5)


def test_decoder_loads_pretrained_tensors_except_the_reinitialised_ones(tmp_path):
    path, original = import_official_tiny(tmp_path)
    decoder = decoder_for(tiny_backbone(checkpoint=path), num_classes=3)  # same token count as the file
    state = decoder.state_dict()
    reinitialised = ("mask_decoder.mask_tokens.", "mask_decoder.output_hypernetworks_mlps.",
                     "mask_decoder.iou_prediction_head.")
    for key, tensor in state.items():
        if key.startswith(reinitialised):
            assert not torch.equal(tensor, original[key]), key
        else:
            assert torch.equal(tensor, original[key]), key
    assert any(k.startswith("prompt_encoder.") for k in state)


def test_decoder_checkpoint_can_be_a_path_or_none(tmp_path):
    path, original = import_official_tiny(tmp_path)
    key = "mask_decoder.transformer.layers.0.mlp.lin1.weight"
    from_path = decoder_for(tiny_backbone(), num_classes=5, checkpoint=path)
    assert torch.equal(from_path.state_dict()[key], original[key])
    assert from_path(torch.randn(2, 64, 4, 4)).shape == (2, 6, 16, 16)
    untouched = decoder_for(tiny_backbone(checkpoint=path), num_classes=5, checkpoint=None)
    assert not torch.equal(untouched.state_dict()[key], original[key])


def test_decoder_shape_mismatch_is_refused_with_key_and_shapes(tmp_path):
    path, _ = import_official_tiny(tmp_path)
    with pytest.raises(CheckpointError, match=r"sam_tiny\.safetensors: mask_decoder\.transformer\.layers\.0\.mlp\.lin1"
                                              r"\.weight has shape \(512, 64\), expected \(256, 64\)"):
        decoder_for(tiny_backbone(checkpoint=path), mlp_dim=256)


def test_what_the_decoder_reads_trains_and_sams_prompt_layers_and_iou_head_are_frozen():
    decoder = decoder_for(tiny_backbone())
    frozen = {n for n, p in decoder.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("prompt_encoder.point_embeddings.", "prompt_encoder.not_a_point_embed.",
                                        "prompt_encoder.mask_downscaling.", "mask_decoder.iou_prediction_head."))
                          for n in frozen)
    decoder(torch.randn(2, 64, 4, 4)).sum().backward()
    assert all(p.grad is not None for p in decoder.parameters() if p.requires_grad)  # every trainable one learns
    assert decoder.mask_decoder.mask_tokens.weight.grad.abs().sum() > 0
    assert decoder.prompt_encoder.no_mask_embed.weight.grad.abs().sum() > 0


def test_width_defaults_follow_sam_and_fit_small_widths():
    assert (default_mlp_dim(256), default_num_heads(256)) == (2048, 8)
    assert (default_mlp_dim(64), default_num_heads(64)) == (512, 8)
    assert default_num_heads(24) == 6
    with pytest.raises(ValueError, match="num_heads 5 must divide half the embedding width"):
        SamedDecoder(num_classes=1, channels=64, grid=4, image_size=64, num_heads=5)


def test_samed_decoder_is_registered_and_builds_from_its_example(monkeypatch):
    monkeypatch.setenv(DISABLE_AUTOLOAD, "1")
    registry = load_plugins(extra=[sam_plugin, samed_plugin]).registry
    backbone_spec, decoder_spec = registry.get("backbone", "sam"), registry.get("decoder", "samed")
    backbone = backbone_spec.build(backbone_spec.example)
    decoder = decoder_spec.build(decoder_spec.example, backbone=backbone, num_classes=1)
    assert decoder(backbone(torch.rand(2, 3, 64, 64))).shape == (2, 2, 16, 16)
