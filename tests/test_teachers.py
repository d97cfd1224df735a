"""Stage-1 teachers: frozen, official-layout checkpoints, CPT objectives on real scans."""

from __future__ import annotations

from pathlib import PurePosixPath

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import samora_kit_plugins.pretext as pretext_plugin
from samora_kit.errors import CheckpointError
from samora_kit.interfaces import Teacher
from samora_kit.plugins import DISABLE_AUTOLOAD, load_plugins
from samora_kit.weights.io import load_weights, save_weights
from samora_kit_plugins.pretext.teacher_mae import MAETeacher, MAETeacherConfig
from samora_kit_plugins.pretext.teacher_simclrv2 import SimCLRv2Teacher, SimCLRv2TeacherConfig

from .conftest import shared_dataset

SIZE = 64
TINY_RESNET = {"depth": 18, "width_multiplier": 1, "selective_kernel": False}
TINY_VIT = {"image_size": SIZE, "embed_dim": 64, "depth": 2, "num_heads": 2,
            "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2}


def real_slices(n_volumes: int = 2, per_volume: int = 4, size: int = SIZE) -> torch.Tensor:
    """Axial slices around the middle of a few MSD hippocampus MRIs: B,3,size,size in [0, 1]
    (percentile-normalised per volume, bilinearly resized, grey repeated to 3 channels)."""
    import nibabel as nib

    root = shared_dataset("msd_hippocampus")
    slices = []
    for path in sorted((root / "imagesTr").glob("*.nii.gz"))[:n_volumes]:
        volume = np.asarray(nib.load(path).dataobj, dtype=np.float32)
        low, high = np.percentile(volume, (1, 99))
        volume = np.clip((volume - low) / max(high - low, 1e-6), 0, 1).astype(np.float32)
        mid = volume.shape[2] // 2
        chosen = torch.from_numpy(volume[:, :, mid - per_volume // 2:mid - per_volume // 2 + per_volume].copy())
        chosen = chosen.permute(2, 0, 1)[:, None]  # per_volume, 1, H, W
        slices.append(F.interpolate(chosen, size=(size, size), mode="bilinear", align_corners=False))
    return torch.cat(slices).clamp(0, 1).repeat(1, 3, 1, 1)  # B, 3, size, size


@pytest.fixture(scope="module")
def scans() -> torch.Tensor:
    return real_slices()


def simclr(**overrides) -> SimCLRv2Teacher:
    return SimCLRv2Teacher(SimCLRv2TeacherConfig.model_validate({**TINY_RESNET, **overrides}))


def mae(**overrides) -> MAETeacher:
    return MAETeacher(MAETeacherConfig.model_validate({**TINY_VIT, **overrides}))


def assert_frozen(teacher) -> None:
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not any(m.training for m in teacher.modules())
    teacher.train()  # e.g. called by a pretext task's .train(): must stay in eval
    assert not any(m.training for m in teacher.modules())


def randomised(teacher) -> dict[str, torch.Tensor]:
    """The teacher's checkpoint tensors, all redrawn (BatchNorm statistics included) so a load is visible."""
    return {k: (torch.rand_like(v) + 0.5 if "running_var" in k else torch.randn_like(v) * 0.1)
            if v.is_floating_point() else v for k, v in teacher.cpt_tensors().items()}


# --------------------------------------------------------------------------- registration and freezing

def test_teachers_are_registered_and_build_frozen_from_their_examples(monkeypatch):
    monkeypatch.setenv(DISABLE_AUTOLOAD, "1")
    registry = load_plugins(extra=[pretext_plugin]).registry
    assert {"simclrv2_resnet", "mae_vit"} <= set(registry.names("teacher"))
    images = torch.rand(2, 3, SIZE, SIZE)
    for name in ("simclrv2_resnet", "mae_vit"):
        spec = registry.get("teacher", name)
        teacher = spec.build(spec.example)
        assert isinstance(teacher, Teacher)
        assert_frozen(teacher)
        assert spec.config_model.model_validate(spec.example).cpt is True
        assert torch.isfinite(teacher(images)).all()


def test_default_simclrv2_teacher_is_resnet50_2x_sk_in_the_separius_layout():
    with torch.device("meta"):
        teacher = SimCLRv2Teacher(SimCLRv2TeacherConfig())
    shapes = {k: tuple(v.shape) for k, v in teacher.cpt_tensors().items()}
    assert shapes["resnet.net.0.0.weight"] == (64, 3, 3, 3)  # SK stem: three 3x3 convs
    assert shapes["resnet.net.1.blocks.0.net.2.main_conv.0.weight"] == (256, 128, 3, 3)  # SK conv, 2x width
    assert shapes["resnet.net.1.blocks.0.projection.shortcut.2.weight"] == (512, 128, 1, 1)
    assert shapes["resnet.net.4.blocks.2.net.4.0.running_var"] == (4096,)
    assert shapes["head.layers.0.weight"] == (4096, 4096) and shapes["head.layers.6.weight"] == (128, 4096)
    assert teacher.embed_dim == 4096
    assert round(sum(p.numel() for p in teacher.resnet.parameters()) / 1e6) == 140  # SimCLRv2: R50 (2x+SK) 140M


def test_mae_teacher_returns_tokens_on_sams_16px_grid():
    teacher = mae()
    assert teacher(torch.rand(3, 3, SIZE, SIZE)).shape == (3, SIZE // 16, SIZE // 16, 64)
    with pytest.raises(ValueError, match="set the teacher's image_size"):
        teacher(torch.rand(1, 3, 32, 32))


# --------------------------------------------------------------------------- checkpoints

def test_simclrv2_teacher_loads_a_separius_conversion_pth(tmp_path):
    source = simclr(selective_kernel=True)
    tensors = randomised(source)
    resnet = {k[len("resnet."):]: v for k, v in tensors.items() if k.startswith("resnet.")}
    resnet.update({"fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)})  # supervised head: ignored
    head = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
    torch.save({"resnet": resnet, "head": head}, tmp_path / "r18_1x_sk1.pth")  # what convert.py writes

    loaded = simclr(selective_kernel=True, checkpoint=tmp_path / "r18_1x_sk1.pth")
    assert_frozen(loaded)
    for key, value in loaded.cpt_tensors().items():
        assert torch.equal(value, tensors[key]), key

    save_weights(tmp_path / "flat.safetensors", tensors, {})  # the same keys flattened
    again = simclr(selective_kernel=True, checkpoint=tmp_path / "flat.safetensors")
    images = torch.rand(2, 3, SIZE, SIZE)
    assert torch.equal(again(images), loaded(images))


def test_simclrv2_teacher_refuses_mismatched_checkpoints_naming_the_key(tmp_path):
    tensors = randomised(simclr())
    save_weights(tmp_path / "plain.safetensors", tensors, {})
    with pytest.raises(CheckpointError, match=r"plain\.safetensors: resnet\.net\.0\.0\.weight has shape "
                                              r"\(64, 3, 7, 7\), expected \(32, 3, 3, 3\)"):
        simclr(selective_kernel=True, checkpoint=tmp_path / "plain.safetensors")  # SK stem differs

    wide = dict(tensors, **{"head.layers.6.weight": torch.zeros(256, 512)})
    save_weights(tmp_path / "wide.safetensors", wide, {})
    with pytest.raises(CheckpointError, match=r"wide\.safetensors: head\.layers\.6\.weight has shape \(256, 512\), "
                                              r"expected \(128, 512\)"):
        simclr(checkpoint=tmp_path / "wide.safetensors")

    no_head = {k: v for k, v in tensors.items() if not k.startswith("head.layers.7.")}
    torch.save(no_head, tmp_path / "no_head.pth")
    with pytest.raises(CheckpointError, match=r"no_head\.pth: missing head\.layers\.7\.bias"):
        simclr(checkpoint=tmp_path / "no_head.pth")


def test_teachers_read_pth_files_only_weights_only(tmp_path):
    torch.save({"model": {"cls_token": torch.zeros(1, 1, 64)}, "args": PurePosixPath("/x")}, tmp_path / "pickle.pth")
    with pytest.raises(CheckpointError, match=r"pickle\.pth: cannot be loaded as a weights-only"):
        mae(checkpoint=tmp_path / "pickle.pth")
    with pytest.raises(CheckpointError, match=r"absent\.pth: no such teacher checkpoint"):
        mae(checkpoint=tmp_path / "absent.pth")


def official_mae_encoder(dim: int, depth: int, grid: int, patch: int = 16) -> dict[str, torch.Tensor]:
    """Random tensors under the key names of facebookresearch/mae's mae_pretrain_vit_*.pth."""
    state = {"cls_token": torch.randn(1, 1, dim), "pos_embed": torch.randn(1, 1 + grid * grid, dim),
             "patch_embed.proj.weight": torch.randn(dim, 3, patch, patch) * 0.02,
             "patch_embed.proj.bias": torch.randn(dim), "norm.weight": torch.randn(dim), "norm.bias": torch.randn(dim)}
    for i in range(depth):
        shapes = {"norm1.weight": (dim,), "norm1.bias": (dim,), "attn.qkv.weight": (3 * dim, dim),
                  "attn.qkv.bias": (3 * dim,), "attn.proj.weight": (dim, dim), "attn.proj.bias": (dim,),
                  "norm2.weight": (dim,), "norm2.bias": (dim,), "mlp.fc1.weight": (4 * dim, dim),
                  "mlp.fc1.bias": (4 * dim,), "mlp.fc2.weight": (dim, 4 * dim), "mlp.fc2.bias": (dim,)}
        state.update({f"blocks.{i}.{k}": torch.randn(*s) * 0.05 for k, s in shapes.items()})
    return state


def test_mae_teacher_loads_the_official_mae_pretrain_layout(tmp_path):
    state = official_mae_encoder(64, 2, SIZE // 16)
    torch.save({"model": state}, tmp_path / "mae_pretrain_vit_tiny.pth")
    teacher = mae(checkpoint=tmp_path / "mae_pretrain_vit_tiny.pth")
    assert_frozen(teacher)
    own = teacher.cpt_tensors()
    for key, value in state.items():
        assert torch.equal(own[key], value), key


def test_mae_teacher_resamples_position_embeddings_of_another_image_size(tmp_path):
    state = official_mae_encoder(64, 2, grid=2)  # trained at 32 px
    save_weights(tmp_path / "at32.safetensors", state, {})
    teacher = mae(checkpoint=tmp_path / "at32.safetensors")  # used at 64 px
    pos = teacher.vit.pos_embed
    assert pos.shape == (1, 1 + 16, 64)
    assert torch.equal(pos[:, 0], state["pos_embed"][:, 0])  # the class token's embedding is kept


def test_mae_teacher_refuses_mismatched_checkpoints_naming_the_key(tmp_path):
    save_weights(tmp_path / "deeper.safetensors", official_mae_encoder(64, 3, 4), {})
    with pytest.raises(CheckpointError, match=r"deeper\.safetensors: unexpected blocks\.2\.attn\.proj\.bias"):
        mae(checkpoint=tmp_path / "deeper.safetensors")
    save_weights(tmp_path / "wider.safetensors", official_mae_encoder(96, 2, 4), {})
    with pytest.raises(CheckpointError, match=r"wider\.safetensors: blocks\.0\.attn\.proj\.bias has shape \(96,\), "
                                              r"expected \(64,\)"):
        mae(checkpoint=tmp_path / "wider.safetensors")
    decoder = {k: v for k, v in mae(decoder_embed_dim=48).cpt_tensors().items() if k.startswith(("mask", "decoder"))}
    save_weights(tmp_path / "other_decoder.safetensors", {**official_mae_encoder(64, 2, 4), **decoder}, {})
    with pytest.raises(CheckpointError, match=r"other_decoder\.safetensors: decoder_blocks\.0\.attn\.proj\.bias has "
                                              r"shape \(48,\), expected \(32,\)"):
        mae(checkpoint=tmp_path / "other_decoder.safetensors")


# --------------------------------------------------------------------------- continual pre-training

def run_cpt(teacher, images: torch.Tensor, steps: int = 15, lr: float = 2e-3) -> list[float]:
    objective = teacher.cpt_objective()
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    losses = []
    for _ in range(steps):
        torch.manual_seed(0)  # the same views / masks every step: the loss measures fitting, not noise
        loss = objective(images)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("make", [simclr, mae], ids=["simclrv2_resnet", "mae_vit"])
def test_cpt_objective_decreases_on_real_scans_and_round_trips_through_safetensors(make, scans, tmp_path):
    torch.manual_seed(0)
    teacher = make()
    before = {k: v.clone() for k, v in teacher.cpt_tensors().items()}
    images = scans[::2]  # 4 slices of 2 scans
    losses = run_cpt(teacher, images)
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses
    changed = [k for k, v in teacher.cpt_tensors().items() if not torch.equal(v, before[k])]
    assert changed, "CPT must train the teacher's own weights"

    features = teacher(scans[:2])  # used directly after CPT: back in eval mode
    assert not any(m.training for m in teacher.modules())
    teacher.save_cpt(tmp_path / "cpt.safetensors", cpt_epochs=1)
    assert load_weights(tmp_path / "cpt.safetensors")[1]["cpt_epochs"] == 1
    fresh = make()
    fresh.load_cpt(tmp_path / "cpt.safetensors")
    assert_frozen(fresh)
    assert torch.equal(fresh(scans[:2]), features)


def test_cpt_results_also_load_as_the_teachers_checkpoint(tmp_path):
    source = mae()
    save_weights(tmp_path / "cpt.safetensors", randomised(source), {})
    images = torch.rand(2, 3, SIZE, SIZE)
    by_checkpoint = mae(checkpoint=tmp_path / "cpt.safetensors")
    by_cpt = mae()
    by_cpt.load_cpt(tmp_path / "cpt.safetensors")
    assert torch.equal(by_checkpoint(images), by_cpt(images))
