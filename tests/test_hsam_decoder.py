"""H-SAM decoder: two stages, prior-weighted cross-attention, full-resolution output, epoch-weighted loss."""

from __future__ import annotations

import pytest
import torch

import samora_kit_plugins.decoders.hsam as hsam_plugin
import samora_kit_plugins.sam as sam_plugin
from samora_kit.interfaces import Decoder
from samora_kit.plugins import DISABLE_AUTOLOAD, load_plugins
from samora_kit.train.model import SegmentationModel
from samora_kit_plugins.decoders.hsam import (HSamDecoder, HSamDecoderConfig, HSamLoss, HSamObjective,
                                              build_hsam_decoder, default_self_attn_heads, hsam_loss_weight)
from samora_kit_plugins.sam import SamBackboneConfig, build_sam_backbone

from .test_weights_import import import_official_tiny


def tiny_backbone(image_size: int = 64, **overrides):
    return build_sam_backbone(SamBackboneConfig(variant="tiny", image_size=image_size, **overrides))


def decoder_for(backbone, num_classes: int = 3, **config) -> HSamDecoder:
    return build_hsam_decoder(HSamDecoderConfig(**config), backbone=backbone, num_classes=num_classes)


@pytest.mark.parametrize("image_size, grid, num_classes", [(64, 4, 1), (64, 4, 2), (64, 4, 8), (224, 14, 8)])
def test_training_returns_both_decoders_and_eval_one_full_resolution_tensor(image_size, grid, num_classes):
    torch.manual_seed(0)
    decoder = decoder_for(tiny_backbone(image_size), num_classes=num_classes)
    assert isinstance(decoder, Decoder) and decoder.num_classes == num_classes
    embedding = torch.randn(2, 64, grid, grid)
    out = decoder.train()(embedding)
    assert set(out) == {"low_res", "full"}
    assert out["low_res"].shape == (2, num_classes + 1, 4 * grid, 4 * grid)
    assert out["full"].shape == (2, num_classes + 1, image_size, image_size)
    decoder.eval()
    with torch.no_grad():
        single = decoder(embedding)
        assert single.shape == (2, num_classes + 1, image_size, image_size)
        assert torch.allclose(single, decoder.predict_logits(embedding))
        both = decoder.forward_both(embedding)
        low_up = torch.nn.functional.interpolate(both["low_res"], size=(image_size, image_size), mode="bilinear",
                                                 align_corners=False)
        assert torch.allclose(single, (low_up + both["full"]) / 2, atol=1e-6)


def test_default_self_attention_heads_divide_the_grid_area():
    assert default_self_attn_heads(14) == 7  # 196, H-SAM at 224
    assert default_self_attn_heads(32) == 8  # 1024, H-SAM at 512
    assert default_self_attn_heads(4) == 8
    assert default_self_attn_heads(5) == 1
    with pytest.raises(ValueError, match="self_attn_heads 3 must divide the embedding grid area 16"):
        decoder_for(tiny_backbone(), self_attn_heads=3)


def test_loss_weight_schedule():
    assert hsam_loss_weight(0) == pytest.approx(0.60)
    assert hsam_loss_weight(29) == pytest.approx(0.68, abs=0.005)
    assert hsam_loss_weight(99) == pytest.approx(0.83, abs=0.005)
    assert hsam_loss_weight(299) == pytest.approx(0.975, abs=0.003)
    loss = HSamLoss(num_classes=2)
    assert loss.weight == pytest.approx(0.6)
    loss.set_epoch(99)
    assert loss.weight == pytest.approx(hsam_loss_weight(99))


def test_loss_combines_both_decoders_with_the_epoch_weight():
    torch.manual_seed(0)
    outputs = {"low_res": torch.randn(2, 3, 16, 16), "full": torch.randn(2, 3, 64, 64)}
    labels = torch.randint(0, 3, (2, 64, 64))
    loss = HSamLoss(num_classes=2, ce_weight=0.2, dice_weight=0.8)
    loss.set_epoch(29)
    out = loss(outputs, labels)
    w = hsam_loss_weight(29)
    assert torch.allclose(out["loss"], (1 - w) * out["loss1"] + w * out["loss2"])
    low_labels = labels[:, ::4, ::4]  # nearest downsampling by 4 picks the top-left pixel
    expected1 = loss.criterion(outputs["low_res"], low_labels)["loss"]
    assert torch.allclose(out["loss1"], expected1)


def test_prior_weights_decoder_two_cross_attention_and_leaves_decoder_one_alone():
    torch.manual_seed(0)
    decoder = decoder_for(tiny_backbone(), num_classes=2).eval()
    embedding = torch.randn(1, 64, 4, 4)
    with torch.no_grad():
        low_a, msk_feat, up_embed = decoder.decode1(embedding)
        prior = decoder.prior_from(low_a)
        assert prior.shape == (1, 3, 16) and torch.allclose(prior.sum(1), torch.ones(1, 16))
        other = torch.roll(prior, shifts=1, dims=1)  # another class-softmaxed prior
        full_a = decoder.decode2(embedding, prior, msk_feat, up_embed)
        full_b = decoder.decode2(embedding, other, msk_feat, up_embed)
        low_b, _, _ = decoder.decode1(embedding)
    assert not torch.allclose(full_a, full_b, atol=1e-4)
    assert torch.equal(low_a, low_b)
    # and the prior reaches decoder 2 only through the cross-attention probabilities
    seen = []
    for m in decoder.mask_decoder2.transformer2.modules():
        if isinstance(m, hsam_plugin.Attention2):
            m.register_forward_hook(lambda mod, args, kwargs, out: seen.append(kwargs["prior"]), with_kwargs=True)
    with torch.no_grad():
        decoder.forward_both(embedding)
    assert len(seen) == 2 * decoder.mask_decoder2.transformer2.depth
    assert all(torch.equal(p, prior) for p in seen)


def test_loss_backpropagates_into_both_decoders():
    torch.manual_seed(0)
    backbone = tiny_backbone()
    model = SegmentationModel(backbone, decoder_for(backbone, num_classes=2)).train()
    objective = HSamObjective(model, HSamLoss(num_classes=2))
    objective.set_epoch(10)
    out = objective(torch.rand(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64)))
    out["loss"].backward()
    d = model.decoder
    for name, p in [("decoder1 mask tokens", d.decoder1.mask_decoder.mask_tokens.weight),
                    ("decoder1 hypernet", d.decoder1.mask_decoder.output_hypernetworks_mlps[0].layers[0].weight),
                    ("decoder2 mask tokens", d.mask_decoder2.mask_tokens.weight),
                    ("decoder2 self-attention", d.mask_decoder2.self_attn.q_proj.weight),
                    ("decoder2 class selector", d.mask_decoder2.med_sel[0].weight),
                    ("decoder2 skip connection", d.mask_decoder2.skip_connect[0].weight),
                    ("decoder2 cross-attention", d.mask_decoder2.transformer2.layers[0].cross_attn_token_to_image
                     .q_proj.weight)]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # eval: the plain model gives full-resolution labels through SegmentationModel.predict
    model.eval()
    assert model.predict(torch.rand(2, 3, 64, 64)).shape == (2, 64, 64)


def test_embedding_noise_only_in_training():
    torch.manual_seed(0)
    decoder = decoder_for(tiny_backbone(), num_classes=2)
    embedding = torch.randn(1, 64, 4, 4)
    decoder.eval()
    with torch.no_grad():
        assert torch.equal(decoder(embedding), decoder(embedding))
        low, msk_feat, up_embed = decoder.decode1(embedding)
        prior = decoder.prior_from(low)
        clean = decoder.decode2(embedding, prior, msk_feat, up_embed)
        for m in decoder.modules():  # training mode without dropout: only the noise differs
            m.train(isinstance(m, HSamDecoder))
        assert decoder.training and not decoder.mask_decoder2.training
        noisy = decoder.decode2(embedding, prior, msk_feat, up_embed)
        assert not torch.allclose(clean, noisy, atol=1e-4)
        decoder.embedding_noise = 0.0
        assert torch.allclose(clean, decoder.decode2(embedding, prior, msk_feat, up_embed), atol=1e-6)


def test_decoder_one_loads_sam_weights_like_samed(tmp_path):
    path, original = import_official_tiny(tmp_path)
    decoder = decoder_for(tiny_backbone(checkpoint=path), num_classes=3)
    key = "mask_decoder.transformer.layers.0.mlp.lin1.weight"
    assert torch.equal(decoder.decoder1.state_dict()[key], original[key])
    assert not any(k.startswith("mask_decoder2.") and k[len("mask_decoder2."):] in original
                   for k in decoder.state_dict())


def test_hsam_decoder_is_registered_and_builds_from_its_example(monkeypatch):
    monkeypatch.setenv(DISABLE_AUTOLOAD, "1")
    registry = load_plugins(extra=[sam_plugin, hsam_plugin]).registry
    backbone_spec, decoder_spec = registry.get("backbone", "sam"), registry.get("decoder", "hsam")
    backbone = backbone_spec.build(backbone_spec.example)
    decoder = decoder_spec.build(decoder_spec.example, backbone=backbone, num_classes=1).eval()
    with torch.no_grad():
        assert decoder(backbone(torch.rand(2, 3, 64, 64))).shape == (2, 2, 64, 64)


def test_hsam_recipe_trains_and_evaluates_through_the_runner(tmp_path):
    from samora_kit.runner import run

    from .synthetic import tiny_recipe, write_decathlon

    data = write_decathlon(tmp_path / "data", n_cases=3)
    recipe = tmp_path / "hsam.toml"
    recipe.write_text(tiny_recipe(data, tmp_path / "run", ["case_000"], ["case_001"], epochs=2)
                      .replace('name = "samed"', 'name = "hsam"'))
    run(recipe, [], False, ["test"], show_progress=False)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert '"loss2"' in lines[0] and '"weight"' in lines[-1]
    assert (tmp_path / "run" / "eval" / "summary.json").exists()
