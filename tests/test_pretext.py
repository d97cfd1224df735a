"""Stage-1 pretext tasks: image-level (simclrv2) and patch-level (mae) experts on a tiny SAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import samora_kit_plugins.pretext as pretext_plugin
import samora_kit_plugins.sam as sam_plugin
from samora_kit.errors import SamoraError
from samora_kit.interfaces import PretextTask
from samora_kit.plugins import DISABLE_AUTOLOAD, load_plugins
from samora_kit_plugins.pretext.mae import MAEPretext, MAEPretextConfig
from samora_kit_plugins.pretext.simclrv2 import SimCLRv2Pretext, SimCLRv2PretextConfig
from samora_kit_plugins.pretext.tokens import blank_patches, random_patch_mask
from samora_kit_plugins.sam import SamBackboneConfig, build_sam_backbone

from .test_teachers import SIZE, mae, real_slices, simclr


@pytest.fixture(scope="module")
def scans() -> torch.Tensor:
    return real_slices()


def tiny_sam():
    return build_sam_backbone(SamBackboneConfig.model_validate({"variant": "tiny", "image_size": SIZE}))


def task(name: str, with_teacher: bool, **overrides):
    torch.manual_seed(0)
    if name == "simclrv2":
        return SimCLRv2Pretext(SimCLRv2PretextConfig(hidden_dim=64, **overrides), tiny_sam(),
                               simclr() if with_teacher else None)
    return MAEPretext(MAEPretextConfig(hidden_dim=64, **overrides), tiny_sam(), mae() if with_teacher else None)


def trainable(module: nn.Module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad}


def test_pretext_tasks_are_registered_and_build_from_their_examples(monkeypatch):
    monkeypatch.setenv(DISABLE_AUTOLOAD, "1")
    registry = load_plugins(extra=[sam_plugin, pretext_plugin]).registry
    assert {"simclrv2", "mae"} <= set(registry.names("pretext"))
    backbone_spec = registry.get("backbone", "sam")
    for name, teacher_name in (("simclrv2", "simclrv2_resnet"), ("mae", "mae_vit")):
        spec, teacher_spec = registry.get("pretext", name), registry.get("teacher", teacher_name)
        for teacher in (teacher_spec.build(teacher_spec.example), None):
            pretext = spec.build(spec.example, backbone=backbone_spec.build(backbone_spec.example), teacher=teacher)
            assert isinstance(pretext, PretextTask)
            out = pretext(torch.rand(2, 3, SIZE, SIZE))
            assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])


@pytest.mark.parametrize("name", ["simclrv2", "mae"])
@pytest.mark.parametrize("with_teacher", [True, False], ids=["teacher", "scratch"])
def test_only_the_lora_and_the_task_heads_train(name, with_teacher):
    pretext = task(name, with_teacher)
    lora = {f"backbone.{k}" for k in pretext.backbone.trainable_state_dict()}
    head = "projector." if name == "simclrv2" else "head."
    heads = {n for n, _ in pretext.named_parameters() if n.startswith(head)}
    assert lora and heads and trainable(pretext) == lora | heads
    pretext.train()
    if with_teacher:
        assert not any(m.training for m in pretext.teacher.modules())  # the teacher stays frozen in eval


def test_a_teacher_fresh_from_cpt_is_frozen_again_by_the_task():
    teacher = simclr()
    teacher.cpt_objective()  # makes the teacher's weights trainable and puts it in training mode
    pretext = SimCLRv2Pretext(SimCLRv2PretextConfig(hidden_dim=64), tiny_sam(), teacher)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not any(m.training for m in pretext.teacher.modules())


@pytest.mark.parametrize("name", ["simclrv2", "mae"])
@pytest.mark.parametrize("with_teacher", [True, False], ids=["teacher", "scratch"])
def test_pretext_loss_decreases_on_real_scans(name, with_teacher, scans):
    pretext = task(name, with_teacher)
    images = scans[::2]  # 4 slices of 2 scans
    params = [p for p in pretext.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-3)
    lora_before = {k: v.clone() for k, v in pretext.backbone.trainable_state_dict().items()}
    losses = []
    pretext.train()
    for _ in range(15):
        torch.manual_seed(1)  # the same views / masks every step: the loss measures fitting, not noise
        loss = pretext(images)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.95 * losses[0], losses
    lora_after = pretext.backbone.trainable_state_dict()
    assert any(not torch.equal(lora_after[k], v) for k, v in lora_before.items()), "the LoRA expert must train"


# --------------------------------------------------------------------------- patch-level alignment

def test_teacher_and_sam_token_i_j_cover_the_same_16px_patch():
    backbone, teacher = tiny_sam(), mae()
    teacher.vit.blocks = nn.Sequential()  # no attention: each teacher token then sees only its own patch
    images = torch.rand(1, 3, SIZE, SIZE)
    i, j = 1, 2
    changed = images.clone()
    changed[:, :, 16 * i:16 * (i + 1), 16 * j:16 * (j + 1)] += 0.5
    with torch.no_grad():
        for tokens in (lambda x: teacher(x), lambda x: backbone.encoder.patch_embed(x)):  # both B, g, g, D
            moved = (tokens(changed) - tokens(images)).abs().amax(dim=-1)[0]  # g, g
            assert moved.shape == (SIZE // 16, SIZE // 16)
            assert moved[i, j] > 0
            moved[i, j] = 0
            assert torch.all(moved == 0)


def test_mae_task_pairs_student_and_teacher_tokens_by_grid_index(scans):
    pretext = task("mae", with_teacher=True)
    images = scans[:2]
    oracle = pretext.target_tokens(images)  # B, g, g, D: the teacher's tokens of the unmasked image
    pretext.predict_tokens = lambda masked: oracle  # a student that predicts every token perfectly
    assert pretext(images)["loss"].item() == pytest.approx(0.0, abs=1e-12)

    g = oracle.shape[1]
    for permutation in (oracle.transpose(1, 2), oracle.flip(1), oracle.flatten(1, 2)[:, torch.randperm(g * g)]
                        .view_as(oracle)):
        pretext.predict_tokens = lambda masked, p=permutation: p  # the same tokens, paired in another order
        assert pretext(images)["loss"].item() > 1e-3


def test_mae_task_blanks_masked_patches_for_the_student_and_shows_the_teacher_the_whole_image(scans):
    pretext = task("mae", with_teacher=True)
    seen = {}

    def recording(role, method):
        def record(x):
            seen[role] = x
            return method(x)
        return record

    pretext.predict_tokens = recording("student", pretext.predict_tokens)
    pretext.target_tokens = recording("teacher", pretext.target_tokens)
    images = scans[:2]
    pretext(images)
    assert torch.equal(seen["teacher"], images)
    differs = (seen["student"] != images).unflatten(2, (SIZE // 16, 16)).unflatten(4, (SIZE // 16, 16))
    per_patch = differs.any(dim=5).any(dim=3).any(dim=1)  # B, g, g: patches the student sees altered
    assert per_patch.sum(dim=(1, 2)).tolist() == [12, 12]  # 75 % of the 16 patches of each image


def test_blanking_fills_masked_patches_with_the_mean_or_zero():
    images = torch.rand(2, 3, 32, 32)
    mask = random_patch_mask(2, 2, 0.5)
    assert mask.sum().item() == 4
    for fill, value in (("zero", torch.zeros(2, 3)), ("mean", images.mean(dim=(2, 3)))):
        out = blank_patches(images, mask, 16, fill)
        for b, i, j in mask.nonzero().tolist():
            patch = out[b, :, 16 * i:16 * i + 16, 16 * j:16 * j + 16]
            assert torch.allclose(patch, value[b, :, None, None].expand(3, 16, 16))
        for b, i, j in (~mask).nonzero().tolist():
            rows, cols = slice(16 * i, 16 * i + 16), slice(16 * j, 16 * j + 16)
            assert torch.equal(out[b, :, rows, cols], images[b, :, rows, cols])


def test_tasks_refuse_teachers_of_the_wrong_level_or_grid():
    with pytest.raises(SamoraError, match="set the teacher's image_size to 64"):
        MAEPretext(MAEPretextConfig(hidden_dim=8), tiny_sam(), mae(image_size=32))
    with pytest.raises(SamoraError, match="use a patch-level teacher such as mae_vit"):
        MAEPretext(MAEPretextConfig(hidden_dim=8), tiny_sam(), simclr())
    with pytest.raises(SamoraError, match="use an image-level teacher such as simclrv2_resnet"):
        SimCLRv2Pretext(SimCLRv2PretextConfig(hidden_dim=8), tiny_sam(), mae())
