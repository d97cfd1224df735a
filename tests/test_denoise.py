"""Pixel-level pretext task: denoising through the encoder + LoRA and a U-Net-style decoder with block skips."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from samora_kit.errors import SamoraError
from samora_kit.interfaces import PretextTask
from samora_kit_plugins.datasets.unlabelled_pool import UnlabelledPoolConfig, build_unlabelled_pool
from samora_kit_plugins.pretext.denoise import DenoiseConfig, build_denoise
from samora_kit_plugins.sam import SamBackboneConfig, build_sam_backbone

from .conftest import shared_dataset

SIZE = 64


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: intra-op threads only add contention (10x slower on a busy 2-core runner)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_task(seed: int = 0, **config):
    torch.manual_seed(seed)
    backbone = build_sam_backbone(SamBackboneConfig(variant="tiny", image_size=SIZE))
    return build_denoise(DenoiseConfig.model_validate(config), backbone=backbone)


@pytest.fixture(scope="module")
def real_slices() -> torch.Tensor:
    """8 real MR slices (B,3,64,64 in [0, 1]): the middle slices of two unlabelled-pool volumes."""
    root = shared_dataset("msd_hippocampus")
    pool = build_unlabelled_pool(UnlabelledPoolConfig(
        root=root, subdir="imagesTr", selection={"split_file": "split.json", "key": "unlabeled_pool", "count": 2}))
    slices = pool.slice_dataset(SIZE)
    picked = []
    for case in pool.cases("train"):
        positions = [i for i, (c, _) in enumerate(slices.index) if c == case]
        middle = len(positions) // 2
        picked += positions[middle - 2: middle + 2]
    return torch.stack([slices[i] for i in picked])


def test_default_skips_are_the_backbones_choice_deepest_first():
    task = tiny_task()
    assert task.backbone.default_skip_blocks() == [0, 1, 2]
    assert task.skip_blocks == [2, 1, 0]  # deepest first: it joins the coarsest decoder stage


def test_output_and_target_share_the_unit_range(real_slices):
    task = tiny_task()
    assert isinstance(task, PretextTask)
    noisy = task.add_noise(real_slices)
    assert 0.0 <= noisy.min() and noisy.max() <= 1.0 and not torch.equal(noisy, real_slices)
    with torch.no_grad():
        denoised = task.reconstruct(noisy)
        out = task(real_slices)
    assert denoised.shape == real_slices.shape  # B, 3, S, S like the clean target
    assert 0.0 <= denoised.min() and denoised.max() <= 1.0
    assert set(out) == {"loss", "psnr"} and out["loss"].ndim == out["psnr"].ndim == 0
    assert 0.0 < out["loss"] < 1.0 and out["psnr"] > 0.0
    with pytest.raises(ValueError, match=r"images in \[0, 1\]"):
        task((real_slices - 0.5) / 0.2)  # z-scored input: the authors' range mismatch
    grey = tiny_task(out_channels=1)
    with torch.no_grad():
        assert grey.reconstruct(noisy).shape == (len(real_slices), 1, SIZE, SIZE)
        assert torch.isfinite(grey(real_slices)["loss"])


def test_noise_is_unclipped_when_clip_is_off():
    task = tiny_task(sigma=0.5, clip=False)
    noisy = task.add_noise(torch.full((2, 3, SIZE, SIZE), 0.5))
    assert noisy.min() < 0.0 and noisy.max() > 1.0
    assert torch.equal(noisy[:, 0], noisy[:, 1])  # one noise field for the grey image's three channels


def test_encoder_runs_once_and_every_skip_feeds_the_decoder():
    task = tiny_task()
    images = torch.rand(2, 3, SIZE, SIZE)
    calls = []
    task.backbone.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        neck, skips = task.encode(images)
        task(images)
    assert len(calls) == 2  # one backbone pass per encode, one per forward
    assert all(not block._forward_hooks for block in task.backbone.encoder.blocks)  # taps removed again
    grid, width = SIZE // 16, task.backbone.encoder.patch_embed.proj.out_channels
    assert neck.shape == (2, task.backbone.embed_channels, grid, grid)
    assert len(skips) == 3 and all(s.shape == (2, grid, grid, width) for s in skips)
    with torch.no_grad():
        reference = task.decoder(neck, skips)
        for i in range(len(skips)):
            zeroed = [torch.zeros_like(s) if j == i else s for j, s in enumerate(skips)]
            assert not torch.allclose(task.decoder(neck, zeroed), reference, atol=1e-6), f"skip {i} unused"
    task(images)["loss"].backward()
    for stage in task.decoder.stages[:3]:
        assert stage.skip.proj.weight.grad.abs().sum() > 0


def test_only_lora_and_decoder_are_trainable():
    task = tiny_task()
    trainable = [name for name, p in task.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n or n.startswith("decoder.") for n in trainable)
    assert any(".lora_" in n for n in trainable) and any(n.startswith("decoder.") for n in trainable)
    frozen = [name for name, p in task.named_parameters() if not p.requires_grad]
    assert all(n.startswith("backbone.") and ".lora_" not in n for n in frozen)


def test_loss_decreases_on_real_slices_and_trains_the_lora(real_slices):
    task = tiny_task(seed=1)
    params = [p for p in task.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.1)
    lora_b = task.backbone.lora_layers()[0].lora_b["q"].weight
    assert lora_b.abs().sum() == 0  # LoRA starts as the identity
    losses = []
    for _ in range(20):
        loss = task(real_slices)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3, losses
    assert lora_b.abs().sum() > 0


def test_a_teacher_is_rejected():
    backbone = build_sam_backbone(SamBackboneConfig(variant="tiny", image_size=SIZE))
    with pytest.raises(SamoraError, match="denoise pretext task uses no teacher"):
        build_denoise(DenoiseConfig(), backbone=backbone, teacher=nn.Identity())


def test_bad_skip_blocks_are_rejected():
    with pytest.raises(SamoraError, match=r"skip_blocks \[4\] out of range: the encoder has blocks 0\.\.3"):
        tiny_task(skip_blocks=[1, 4])
    with pytest.raises(ValidationError, match="repeats a block index"):
        DenoiseConfig(skip_blocks=[1, 1])
    with pytest.raises(ValidationError, match="decoder_channels"):
        DenoiseConfig(decoder_channels=[64, 32])
    assert tiny_task(skip_blocks=[]).decoder.stages[0].skip is None  # no skips: the authors' decoder shape


def test_denoise_is_registered_and_its_example_trains(monkeypatch):
    import samora_kit_plugins.pretext as pretext_plugins
    import samora_kit_plugins.sam as sam_plugin
    from samora_kit.plugins import DISABLE_AUTOLOAD, load_plugins

    monkeypatch.setenv(DISABLE_AUTOLOAD, "1")
    loaded = load_plugins(extra=[sam_plugin, pretext_plugins])
    assert not loaded.failures
    backbone_spec, spec = loaded.registry.get("backbone", "sam"), loaded.registry.get("pretext", "denoise")
    assert spec.summary.startswith("Pixel-level pretext")
    task = spec.build(spec.example, backbone=backbone_spec.build(backbone_spec.example))
    out = task(torch.rand(2, 3, SIZE, SIZE))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and torch.isfinite(out["psnr"])
