"""Mini-SAM: SAM's promptable training at a tiny size, exported as an official checkpoint, imported, and
loaded by SAMed with the re-initialisation rule applied."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from segment_anything.modeling import Sam

from samora_benchmarks.world import mini_sam
from samora_kit.errors import SamoraError
from samora_kit.plugins import default_registry
from samora_kit.recipe import load_recipe
from samora_kit.train.model import build_model
from samora_kit.weights.io import load_weights
from samora_benchmarks.datasets.scenes import ScenesConfig, build_scenes
from samora_kit_plugins.decoders.samed import REINITIALISED
from samora_kit_plugins.sam_weights import save_sam_layout
from samora_kit_plugins.sam import SamBackboneConfig, build_sam_backbone

SIZE = 64


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    """A tiny encoder in the layout benchmarks/recipes/world/source_mae.toml writes ("sam-encoder", 64 px)."""
    torch.manual_seed(0)
    backbone = build_sam_backbone(SamBackboneConfig(variant="tiny", image_size=SIZE))
    path, _ = save_sam_layout(tmp_path_factory.mktemp("mae") / "base.safetensors",
                              backbone.encoder_state_in_official_layout(),
                              {"format": "sam-encoder", "origin": "self-pre-trained", "variant": "tiny",
                               "source_image_size": SIZE})
    return path


@pytest.fixture(scope="module")
def scenes():
    return build_scenes(ScenesConfig(num_images=6, image_size=SIZE, shapes_per_image=(2, 5))).instance_dataset(SIZE)


def batch_of(dataset, indices):
    return [torch.stack(t) for t in zip(*(dataset[i] for i in indices))]


def test_losses_are_finite_and_fall_when_overfitting_one_batch(encoder_file, scenes):
    torch.manual_seed(0)
    model = mini_sam.build_promptable_sam(encoder_file, "tiny", SIZE, corrections=1)
    batch = batch_of(mini_sam.PromptedInstances(scenes, 3, 1, seed=0), [0, 1])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for _ in range(12):
        out = model(*batch)
        assert all(torch.isfinite(v) for v in out.values()), out
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < 0.7 * losses[0], losses
    encoder_grads = [p.grad for p in model.backbone.encoder.parameters()]
    assert all(g is not None for g in encoder_grads)  # the encoder trains too, as in SAM


def test_best_of_three_keeps_the_lowest_loss_and_only_it_gets_a_gradient():
    losses = torch.tensor([[3.0, 1.0, 2.0], [0.5, 4.0, 5.0]], requires_grad=True)
    kept, index = mini_sam.best_of(losses)
    assert kept.tolist() == [1.0, 0.5] and index.tolist() == [1, 0]
    kept.sum().backward()
    assert losses.grad.tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]


def test_prompts_are_deterministic_by_seed_epoch_and_index_and_lie_on_their_mask(scenes):
    data = mini_sam.PromptedInstances(scenes, 12, 2, seed=5)  # more prompts than any scene has instances
    first = data[3]
    assert all(torch.equal(a, b) for a, b in zip(first, data[3]))
    data.set_epoch(1)
    assert not torch.equal(first[2], data[3][2])
    assert not torch.equal(first[2], mini_sam.PromptedInstances(scenes, 12, 2, seed=6)[3][2])
    image, masks, coords, labels, draws = first
    assert (masks.shape, coords.shape, labels.shape, draws.shape) == ((12, SIZE, SIZE), (12, 2, 2), (12, 2), (12, 2))
    margin = mini_sam.BOX_NOISE_MAX * SIZE + 1e-4
    kinds = set()
    for mask, (a, b), label in zip(masks, coords, labels.tolist()):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if label == [*mini_sam.BOX_CORNERS]:
            kinds.add("box")
            truth = torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float()
            assert (torch.cat([a, b]) - truth).abs().max() <= margin
            assert (a <= b).all()
        else:
            kinds.add("point")
            assert label == [mini_sam.POSITIVE, mini_sam.NOT_A_POINT]
            assert mask[int(a[1]), int(a[0])]  # x, y inside its instance
    assert kinds == {"box", "point"}


def test_instances_are_all_used_before_any_repeats():
    rng = np.random.default_rng(0)
    chosen = mini_sam.choose_instances(rng, 3, 7)
    assert len(chosen) == 7 and set(chosen[:3]) == {0, 1, 2}
    assert len(set(mini_sam.choose_instances(rng, 10, 4))) == 4


def test_correction_point_falls_in_the_error_region_with_the_right_label():
    targets = torch.zeros(3, 8, 8, dtype=torch.bool)
    targets[:, 2:6, 2:6] = True
    predicted = targets.clone()
    predicted[0, 2:6, 2:4] = False  # a miss: the point is positive
    predicted[1, 0, :] = True  # a false alarm: negative
    coords, labels = mini_sam.correction_points(predicted, targets, torch.tensor([0.0, 0.99, 0.5]))
    x, y = coords[:, 0].long().T
    assert not predicted[0, y[0], x[0]] and targets[0, y[0], x[0]] and labels[0, 0] == mini_sam.POSITIVE
    assert predicted[1, y[1], x[1]] and not targets[1, y[1], x[1]] and labels[1, 0] == mini_sam.NEGATIVE
    assert labels[2, 0] == mini_sam.NOT_A_POINT  # already exact


def test_batched_prompts_and_decoding_equal_segment_anythings(encoder_file):
    torch.manual_seed(0)
    model = mini_sam.build_promptable_sam(encoder_file, "tiny", SIZE, corrections=0)
    pe, decoder = model.prompt_encoder, model.mask_decoder
    point, box = torch.tensor([[[10.0, 20.0]]]), torch.tensor([[5.0, 6.0, 40.0, 50.0]])
    official_point, _ = pe(points=(point, torch.tensor([[1]])), boxes=None, masks=None)  # SAM pads one token
    official_box, _ = pe(points=None, boxes=box, masks=None)
    coords = torch.tensor([[[10.0, 20.0], [0.0, 0.0]], [[5.0, 6.0], [40.0, 50.0]]])
    labels = torch.tensor([[mini_sam.POSITIVE, mini_sam.NOT_A_POINT], list(mini_sam.BOX_CORNERS)])
    sparse = mini_sam.embed_prompts(pe, coords, labels)
    assert torch.allclose(sparse, torch.cat([official_point, official_box]), atol=1e-6)

    image = torch.randn(1, 64, SIZE // 16, SIZE // 16)
    dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(2, -1, SIZE // 16, SIZE // 16)
    official = decoder.predict_masks(image, pe.get_dense_pe(), sparse, dense)  # repeats the one image per prompt
    ours = mini_sam.predict_masks(decoder, image.expand(2, -1, -1, -1), pe.get_dense_pe(), sparse, dense)
    for a, b in zip(ours, official):
        assert torch.allclose(a, b, atol=1e-5)


def samed_recipe(tmp_path, checkpoint, image_size):
    path = tmp_path / f"samed_{image_size}.toml"
    path.write_text(f"""
task = "segment"
[run]
seed = 3
[backbone]
name = "sam"
variant = "tiny"
image_size = {image_size}
checkpoint = "{checkpoint}"
[decoder]
name = "samed"
checkpoint = "backbone"
[data]
name = "scenes"
num_images = 4
""")
    return load_recipe(path, default_registry())


def test_exported_checkpoint_imports_and_samed_starts_from_it_with_the_reinitialised_parts_new(
        tmp_path, encoder_file):
    torch.manual_seed(1)
    model = mini_sam.build_promptable_sam(encoder_file, "tiny", SIZE, corrections=0)
    with torch.no_grad():  # every tensor distinctive, so equality means "loaded from the file"
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    exported = mini_sam.export_official(model, tmp_path / "mini_sam.pth")

    official = torch.load(tmp_path / "mini_sam.pth", weights_only=True)
    assert set(official) == set(exported)
    assert all(k.startswith(("image_encoder.", "prompt_encoder.", "mask_decoder.")) for k in official)
    reference = Sam(mini_sam.build_image_encoder("tiny", SIZE), mini_sam.build_prompt_encoder(64, SIZE // 16, SIZE),
                    mini_sam.build_mask_decoder(64))
    reference.load_state_dict(official, strict=True)  # segment-anything's own Sam takes it as it is

    imported, _ = mini_sam.import_official(tmp_path / "mini_sam.pth", tmp_path / "mini_sam.safetensors", "tiny")
    tensors, header = load_weights(imported)
    assert (header["format"], header["variant"], header["source_image_size"]) == ("segment-anything", "tiny", SIZE)
    assert imported.with_suffix(".safetensors.sha256").is_file()

    samed = build_model(samed_recipe(tmp_path, imported, SIZE), default_registry(), num_classes=3)
    decoder_state = samed.decoder.state_dict()
    kept = [k for k in decoder_state if not k.startswith(REINITIALISED)]
    assert any(k.startswith("mask_decoder.transformer.") for k in kept) and "prompt_encoder.no_mask_embed.weight" in kept
    for key in kept:
        assert torch.equal(decoder_state[key], exported[key]), key
    renewed = [k for k in decoder_state if k.startswith(REINITIALISED)]
    assert {k.split(".")[1] for k in renewed} == {"mask_tokens", "output_hypernetworks_mlps", "iou_prediction_head"}
    for key in renewed:  # 3 classes + background = SAM's 4 mask tokens: same shapes, new values
        assert decoder_state[key].shape == exported[key].shape
        assert not torch.equal(decoder_state[key], exported[key]), key
    encoder = samed.backbone.encoder_state_in_official_layout()
    assert set(encoder) == {k for k in exported if k.startswith("image_encoder.")}
    for key, tensor in encoder.items():
        assert torch.equal(tensor, exported[key]), key

    larger = build_model(samed_recipe(tmp_path, imported, 2 * SIZE), default_registry(), num_classes=2)
    assert larger.backbone.encoder.pos_embed.shape[1:3] == (2 * SIZE // 16,) * 2  # positions resized on load


def test_build_trains_exports_imports_and_reuses_with_the_same_settings(tmp_path, encoder_file, monkeypatch):
    settings = mini_sam.Settings(source="scenes", steps=3, batch_size=2, prompts_per_image=2, corrections=1,
                                 num_scenes=6, eval_images=2, warmup=0.0)
    out = tmp_path / "mini"
    record = mini_sam.build_mini_sam(settings, encoder_file, out, show_progress=False)
    assert record["status"] == "done" and record["steps"] == 3 and record["settings"]["image_size"] == SIZE
    assert (out / "mini_sam.pth").is_file() and (out / "mini_sam.safetensors.sha256").is_file()
    assert set(record["held_out_after"]["scenes"]) == {"box_miou", "box_oracle_miou", "point_miou",
                                                       "point_oracle_miou"}
    assert json.loads((out / "mini_sam.json").read_text())["fingerprint"] == record["fingerprint"]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished mini-SAM with the same settings was trained again")

    monkeypatch.setattr(mini_sam, "train", no_training)
    assert mini_sam.build_mini_sam(settings, encoder_file, out, show_progress=False) == record
    with pytest.raises(SamoraError, match="other settings"):
        mini_sam.build_mini_sam(mini_sam.Settings(**{**settings.__dict__, "lr": 0.01}), encoder_file, out,
                                show_progress=False)


class Interrupted(Exception):
    pass


def test_an_interrupted_build_resumes_and_exports_what_an_uninterrupted_one_does(tmp_path, encoder_file,
                                                                                 monkeypatch):
    settings = mini_sam.Settings(source="scenes", steps=4, batch_size=2, prompts_per_image=2, corrections=1,
                                 num_scenes=6, eval_images=2, warmup=0.0, checkpoint_every=2)
    whole = mini_sam.build_mini_sam(settings, encoder_file, tmp_path / "whole", show_progress=False)

    def stop_after_step_3(step):
        if step == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        mini_sam.build_mini_sam(settings, encoder_file, tmp_path / "cut", show_progress=False,
                                step_callbacks=[stop_after_step_3])
    assert json.loads((tmp_path / "cut" / "mini_sam.json").read_text())["status"] == "training"
    resumed = mini_sam.build_mini_sam(settings, encoder_file, tmp_path / "cut", show_progress=False)
    assert resumed["resumed"] and resumed["steps"] == 4 and resumed["fingerprint"] == whole["fingerprint"]
    a, b = (torch.load(tmp_path / run / "mini_sam.pth", weights_only=True) for run in ("whole", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_settings_start_from_the_preset_and_take_the_flags(tmp_path):
    settings, args = mini_sam.parse_args(["--encoder", "e.safetensors", "--out", str(tmp_path), "--scale", "gpu",
                                          "--source", "scenes", "--steps", "7", "--image-size", "128"])
    assert (settings.source, settings.steps, settings.image_size) == ("scenes", 7, 128)
    assert settings.batch_size == mini_sam.PRESETS["gpu"].batch_size and args.device == "auto"
