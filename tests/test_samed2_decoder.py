"""SAMed-2 decoder: SAM2's prompt-free mask decoder with high-res features, num_classes + 1 masks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from sam2.modeling.sam.mask_decoder import MaskDecoder
from sam2.modeling.sam.prompt_encoder import PromptEncoder
from sam2.modeling.sam.transformer import TwoWayTransformer
from torch import nn

import samora_kit_plugins.decoders.samed2 as samed2_plugin
from samora_kit.errors import CheckpointError, SamoraError
from samora_kit.interfaces import Decoder, FeaturePyramid
from samora_kit.plugins import DISABLE_AUTOLOAD, load_plugins
from samora_kit.weights.io import save_weights
from samora_kit_plugins.decoders.samed2 import Samed2Decoder, Samed2DecoderConfig, build_samed2_decoder

C, G = 32, 4


def stand_in_backbone(**extra):
    return SimpleNamespace(**{"image_size": 64, "embed_channels": C, "embed_grid": G, "embed_stride": 64 // G,
                              "high_res_channels": (C, C), "checkpoint_path": None, **extra})


def decoder_for(backbone=None, num_classes: int = 3, **config) -> Samed2Decoder:
    return build_samed2_decoder(Samed2DecoderConfig(**config), backbone=backbone or stand_in_backbone(),
                                num_classes=num_classes)


def pyramid(b: int = 2) -> FeaturePyramid:
    return FeaturePyramid(torch.randn(b, C, G, G), (torch.randn(b, C, 4 * G, 4 * G), torch.randn(b, C, 2 * G, 2 * G)))


def test_output_is_num_classes_plus_one_low_res_logits_for_a_batch():
    decoder = decoder_for(num_classes=3)
    assert isinstance(decoder, Decoder) and decoder.num_classes == 3
    assert decoder(pyramid(2)).shape == (2, 4, 4 * G, 4 * G)


def test_gradient_reaches_every_trainable_parameter():
    decoder = decoder_for(num_classes=2)
    decoder(pyramid(2)).square().mean().backward()
    trainable = {n: p for n, p in decoder.named_parameters() if p.requires_grad}
    assert {"no_mem_embed", "mask_decoder.conv_s0.weight", "mask_decoder.conv_s1.weight"} <= set(trainable)
    no_grad = [n for n, p in trainable.items() if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == []


def test_logits_depend_on_both_high_res_maps():
    decoder = decoder_for(num_classes=2)
    features = pyramid(1)
    base = decoder(features)
    for level in range(2):
        high_res = list(features.high_res)
        high_res[level] = torch.randn_like(high_res[level])
        assert not torch.allclose(decoder(features._replace(high_res=tuple(high_res))), base)


def test_batched_output_equals_sam2_mask_decoder_prediction():
    decoder = decoder_for(num_classes=2)
    features = pyramid(3)
    md, pe = decoder.mask_decoder, decoder.prompt_encoder
    # what SAM2Base does for one image: no_mem_embed on the embedding, conv_s0/conv_s1 on FPN levels 0/1
    embedding = features.embedding + decoder.no_mem_embed.view(1, C, 1, 1)
    high_res = [md.conv_s0(features.high_res[0]), md.conv_s1(features.high_res[1])]
    sparse, dense = pe(points=None, boxes=None, masks=None)  # 1,0,C ; 1,C,g,g
    reference, _, _, _ = md.predict_masks(embedding, pe.get_dense_pe(), sparse.expand(3, -1, -1), dense,
                                          repeat_image=False, high_res_features=high_res)
    assert reference.shape == (3, 3, 4 * G, 4 * G)
    assert torch.allclose(decoder(features), reference, atol=1e-5)
    multimask, _, _, _ = md(embedding, pe.get_dense_pe(), sparse.expand(3, -1, -1), dense, multimask_output=True,
                            repeat_image=False, high_res_features=high_res)
    assert torch.allclose(decoder(features)[:, 1:], multimask, atol=1e-5)  # the foreground tokens


class OfficialLayout(nn.Module):
    """The SAM2Base attribute names the official checkpoint's decoder keys come from."""

    def __init__(self):
        super().__init__()
        self.no_mem_embed = nn.Parameter(torch.randn(1, 1, C))
        self.sam_prompt_encoder = PromptEncoder(embed_dim=C, image_embedding_size=(G, G),
                                                input_image_size=(64, 64), mask_in_chans=16)
        self.sam_mask_decoder = MaskDecoder(
            num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=C, mlp_dim=8 * C,
                                                                   num_heads=8),
            transformer_dim=C, iou_head_depth=3, iou_head_hidden_dim=256, use_high_res_features=True,
            iou_prediction_use_sigmoid=True, pred_obj_scores=True, pred_obj_scores_mlp=True,
            use_multimask_token_for_obj_ptr=True)
        self.image_encoder = nn.Linear(2, 2)  # stands for the encoder tensors a full file also holds


def official_file(tmp_path, drop: str | None = None):
    state = OfficialLayout().state_dict()
    if drop:
        del state[drop]
    path = save_weights(tmp_path / "sam2_tiny.safetensors", state, {"format": "sam2", "variant": "tiny"})
    return path, state


def test_decoder_loads_sam2_tensors_except_the_class_specific_ones(tmp_path):
    path, original = official_file(tmp_path)
    decoder = decoder_for(stand_in_backbone(checkpoint_path=path), num_classes=3)  # same token count as the file
    reinitialised = ("mask_decoder.mask_tokens.", "mask_decoder.output_hypernetworks_mlps.",
                     "mask_decoder.iou_prediction_head.", "mask_decoder.pred_obj_score_head.")
    for key, tensor in decoder.state_dict().items():
        theirs = samed2_plugin.official_key(key)
        if key.startswith(reinitialised):
            assert not torch.equal(tensor, original[theirs]), key
        else:
            assert torch.equal(tensor, original[theirs]), key
    assert samed2_plugin.official_key("mask_decoder.conv_s0.weight") == "sam_mask_decoder.conv_s0.weight"


def test_checkpoint_can_be_a_path_or_none_and_encoder_only_files_start_fresh(tmp_path):
    path, original = official_file(tmp_path)
    key = "mask_decoder.transformer.layers.0.mlp.layers.0.weight"
    from_path = decoder_for(num_classes=5, checkpoint=path)
    assert torch.equal(from_path.state_dict()[key], original["sam_" + key])
    assert from_path(pyramid(1)).shape == (1, 6, 4 * G, 4 * G)
    untouched = decoder_for(stand_in_backbone(checkpoint_path=path), num_classes=5, checkpoint=None)
    assert not torch.equal(untouched.state_dict()[key], original["sam_" + key])
    encoder_only = save_weights(tmp_path / "enc.safetensors", {"x": torch.zeros(1)}, {"format": "sam2-encoder"})
    decoder_for(stand_in_backbone(checkpoint_path=encoder_only))  # no decoder in the file: no error


def test_missing_or_misshaped_checkpoint_key_is_named(tmp_path):
    path, _ = official_file(tmp_path, drop="sam_mask_decoder.conv_s1.weight")
    with pytest.raises(CheckpointError, match=r"sam2_tiny\.safetensors: missing sam_mask_decoder\.conv_s1\.weight"):
        decoder_for(checkpoint=path)
    path, _ = official_file(tmp_path)
    with pytest.raises(CheckpointError, match=r"sam_mask_decoder\.transformer\.layers\.0\.mlp\.layers\.0\.weight has "
                                              r"shape \(256, 32\), expected \(64, 32\)"):
        decoder_for(checkpoint=path, mlp_dim=64)


@pytest.mark.parametrize("features", [
    torch.randn(1, C, G, G),
    FeaturePyramid(torch.randn(1, C, G, G), (torch.randn(1, C, 4 * G, 4 * G),)),
    FeaturePyramid(torch.randn(1, C, G, G), (torch.randn(1, C, 2 * G, 2 * G), torch.randn(1, C, 4 * G, 4 * G))),
])
def test_wrong_input_is_refused_naming_the_sam2_backbone_and_shapes(features):
    with pytest.raises(ValueError, match=r'needs a SAM2 backbone \(backbone.name = "sam2"\).*expected '
                                         r"FeaturePyramid\(embedding B,32,4,4, high_res=\(B,32,16,16, B,32,8,8\)\)"):
        decoder_for()(features)


def test_backbone_without_multi_scale_features_is_refused():
    backbone = SimpleNamespace(image_size=64, embed_channels=C, embed_grid=G, embed_stride=64 // G, checkpoint_path=None)
    with pytest.raises(SamoraError, match=r'decoder.name = "samed2" needs backbone.name = "sam2"'):
        decoder_for(backbone)


def test_samed2_decoder_is_registered_and_builds_from_its_example(monkeypatch):
    monkeypatch.setenv(DISABLE_AUTOLOAD, "1")
    spec = load_plugins(extra=[samed2_plugin]).registry.get("decoder", "samed2")
    decoder = spec.build(spec.example, backbone=stand_in_backbone(), num_classes=1)
    assert decoder(pyramid(1)).shape == (1, 2, 4 * G, 4 * G)
