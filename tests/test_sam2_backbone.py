"""SAM2 Hiera backbone: architecture from sam2's configs, FeaturePyramid, LoRA, fused experts, import."""

from __future__ import annotations

import importlib.resources

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from pydantic import ValidationError
from sam2.modeling.backbones.utils import window_partition, window_unpartition
from torch import nn

import samora_kit_plugins.sam2 as sam2_plugin
from samora_kit.errors import CheckpointError, SamoraError
from samora_kit.interfaces import FeaturePyramid, PretrainableBackbone
from samora_kit.plugins import DISABLE_AUTOLOAD, load_plugins
from samora_kit.weights.checksummed import sidecar_path
from samora_kit.weights.imports import import_checkpoint
from samora_kit_plugins.lora import LoRAQKV
from samora_kit_plugins.sam_weights import read_sam_weights
from samora_kit_plugins.lora.expert_pack import load_expert_pack, save_expert_pack
from samora_kit_plugins.sam2 import (PIXEL_MEAN, PIXEL_STD, Sam2Backbone, Sam2BackboneConfig, build_sam2_backbone,
                                     image_encoder_node)
from samora_kit_plugins.sam2.backbone import reference_encoder_state

from .test_experts import SumFuser, Unfolded, registry_fuser  # test fusers shared with SAM's tests

NAMES = ["image", "patch", "pixel"]
ATOL = 1e-5


class ZeroFuser(SumFuser):
    def forward(self, deltas: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        return torch.zeros_like(deltas[0])


class MergeFuser(nn.Module):
    def __init__(self, dim: int, num_heads: int, names: list[str]) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.tensor([0.5, -1.0, 2.0][:len(names)]))

    def mixing_weights(self) -> torch.Tensor:
        return self.weights


def tiny(seed: int = 0, fuser=None, **overrides) -> Sam2Backbone:
    torch.manual_seed(seed)
    config = Sam2BackboneConfig.model_validate({"variant": "tiny", "image_size": 64, **overrides})
    backbone = build_sam2_backbone(config, fuser=fuser)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # sam2 zero-initialises the position embeddings: make them matter
        backbone.encoder.pos_embed.normal_(std=0.1, generator=gen)
        backbone.encoder.pos_embed_window.normal_(std=0.1, generator=gen)
    return backbone


def official_encoder(backbone: Sam2Backbone) -> nn.Module:
    """sam2's own ImageEncoder (hydra-instantiated from the same node) with the backbone's frozen weights."""
    encoder = instantiate(image_encoder_node(backbone.variant), _convert_="all")
    state = {k[len("image_encoder."):]: v for k, v in backbone.encoder_state_in_official_layout().items()}
    encoder.load_state_dict(state)
    return encoder.eval()


def official_pyramid(encoder: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    mean, std = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    return encoder((images - mean) / std)["backbone_fpn"]


def randomise_experts(backbone: Sam2Backbone, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    experts = []
    for name in backbone.expert_names:
        state = {k: torch.randn(v.shape, generator=gen) * 0.2 if ".lora_b." in k else v
                 for k, v in backbone.expert_state(name).items()}
        backbone.load_expert(name, state)
        experts.append(state)
    return experts


def attention_branch(block, x: torch.Tensor, expert: dict | None, index: int) -> torch.Tensor:
    """sam2's MultiScaleBlock attention half (norm1, windows, attn with q-pool, unpartition), its qkv
    wrapped in one LoRA holding `expert`'s tensors (None: the frozen qkv)."""
    base = block.attn.qkv.base
    qkv = base
    if expert is not None:
        qkv = LoRAQKV(base, rank=4, targets=("q", "v"))
        with torch.no_grad():
            for t in ("q", "v"):
                for ab in "ab":
                    key = f"encoder.blocks.{index}.attn.qkv.lora_{ab}.{t}.weight"
                    getattr(qkv, f"lora_{ab}")[t].weight.copy_(expert[key])
    fused_qkv = block.attn.qkv
    block.attn.qkv = qkv
    try:
        h = block.norm1(x)
        size = h.shape[1:3]
        window = block.window_size
        if window > 0:
            h, pad = window_partition(h, window)
        h = type(block.attn).forward(block.attn, h)
        if block.q_stride:
            window = block.window_size // block.q_stride[0]
            size = (size[0] // 2, size[1] // 2)
            pad = tuple(s + (window - s % window) % window for s in size) if window > 0 else None
        if block.window_size > 0:
            h = window_unpartition(h, window, pad, size)
        return h
    finally:
        block.attn.qkv = fused_qkv


@torch.no_grad()
def reference_loop(backbone: Sam2Backbone, experts: list[dict], images: torch.Tensor, fuse) -> list[torch.Tensor]:
    """K+1 plain runs of every block's attention (frozen, then each expert's single LoRA), fused with `fuse`."""
    trunk = backbone.encoder
    x = trunk.patch_embed((images - backbone.pixel_mean) / backbone.pixel_std)
    x = x + trunk._get_pos_embed(x.shape[1:3])
    features = []
    for i, block in enumerate(trunk.blocks):
        shortcut = x if block.dim == block.dim_out else block.pool(
            block.proj(block.norm1(x)).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        outs = [attention_branch(block, x, e, i) for e in [None, *experts]]
        x = shortcut + outs[0] + fuse(torch.stack([o - outs[0] for o in outs[1:]]))
        x = x + block.mlp(block.norm2(x))
        if i in trunk.stage_ends:
            features.append(x.permute(0, 3, 1, 2))
    fpn, _ = backbone.neck(features)
    return fpn[:3]


# --- architecture and forward ----------------------------------------------------------------------------

def test_feature_pyramid_shapes_and_attributes_at_64_px():
    backbone = tiny()
    assert isinstance(backbone, PretrainableBackbone)
    out = backbone(torch.rand(2, 3, 64, 64))
    assert isinstance(out, FeaturePyramid)
    assert out.embedding.shape == (2, 32, 4, 4)
    assert [tuple(h.shape) for h in out.high_res] == [(2, 32, 16, 16), (2, 32, 8, 8)]
    assert (backbone.image_size, backbone.embed_channels, backbone.embed_grid) == (64, 32, 4)
    assert backbone.high_res_channels == (32, 32) and backbone.variant == "tiny" and backbone.checkpoint_path is None
    with pytest.raises(ValueError, match=r"expects images B,3,64,64; got \(1, 3, 96, 96\)"):
        backbone(torch.rand(1, 3, 96, 96))


def test_lora_at_init_equals_the_official_sam2_image_encoder():
    backbone = tiny()
    with torch.no_grad():
        images = torch.rand(2, 3, 64, 64)
        ours = backbone(images)
        official = official_pyramid(official_encoder(backbone), images)
        assert torch.allclose(ours.embedding, official[2], atol=ATOL)
        assert all(torch.allclose(a, b, atol=ATOL) for a, b in zip(ours.high_res, official[:2]))
        backbone.lora_layers()[4].lora_b["q"].weight.normal_()
        assert not torch.allclose(backbone(images).embedding, official[2], atol=ATOL)


def test_only_lora_is_trainable_and_shapes_follow_each_stage():
    backbone = tiny()
    trainable = {n: p for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_a." in n or ".lora_b." in n for n in trainable)
    assert len(trainable) == 6 * 2 * 2 and set(backbone.trainable_state_dict()) == set(trainable)
    assert trainable["encoder.blocks.1.attn.qkv.lora_a.q.weight"].shape == (4, 16)  # stage transition 16 -> 32
    assert trainable["encoder.blocks.1.attn.qkv.lora_b.v.weight"].shape == (32, 4)
    backbone(torch.rand(1, 3, 64, 64)).embedding.square().sum().backward()
    assert all(p.grad is None for n, p in backbone.named_parameters() if n not in trainable)
    assert trainable["encoder.blocks.2.attn.qkv.lora_b.v.weight"].grad.abs().sum() > 0


def test_pretrainable_backbone_methods():
    backbone = tiny()
    assert backbone.token_channels == 32 and backbone.block_channels == [16, 32, 64, 64, 64, 128]
    assert backbone.default_skip_blocks() == [0, 1, 4]
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out, blocks = backbone.block_outputs(images, [4, 0])
        assert [tuple(b.shape) for b in blocks] == [(2, 4, 4, 64), (2, 16, 16, 16)]
        assert torch.equal(out.embedding, backbone(images).embedding)
        assert torch.equal(backbone.tokens(images), out.embedding.permute(0, 2, 3, 1))
    assert not any(b._forward_hooks for b in backbone.encoder.blocks)
    with pytest.raises(ValueError, match="block 6 out of range"):
        backbone.block_outputs(images, [6])


# --- stage 2: fused experts ------------------------------------------------------------------------------

@pytest.mark.parametrize("fuser, size", [(SumFuser, 64), (SumFuser, 96), (ZeroFuser, 64)])
def test_batched_experts_equal_a_plain_per_expert_loop(fuser, size):  # 96 px: padded windows in stage 3
    backbone = tiny(fuser=fuser, experts={"names": NAMES}, image_size=size)
    experts = randomise_experts(backbone)
    assert [f.dim for f in backbone.fusers().values()] == [16, 32, 64, 64, 64, 128]
    assert [f.num_heads for f in backbone.fusers().values()] == [1, 2, 4, 4, 4, 8]
    images = torch.rand(2, 3, size, size)
    with torch.no_grad():
        out = backbone(images)
    reference = reference_loop(backbone, experts, images, lambda d: fuser(1, 1, NAMES)(d))
    assert torch.allclose(out.embedding, reference[2], atol=ATOL)
    assert all(torch.allclose(a, b, atol=ATOL) for a, b in zip(out.high_res, reference[:2]))
    if fuser is ZeroFuser:  # a zero-initialised fuser (HL-Attn at init) gives the frozen encoder
        frozen = official_pyramid(official_encoder(backbone), images)
        assert torch.allclose(out.embedding, frozen[2], atol=ATOL)


@pytest.mark.parametrize("name", ["hl_attn", "sum", "lac", "mole"])
def test_folded_projection_equals_projecting_every_expert(name):
    """On Hiera (q-pooling, dim != dim_out at stage transitions, padded windows at 96 px): P folded
    into the fuser == every variant projected."""
    folded = tiny(fuser=registry_fuser(name), experts={"names": NAMES}, image_size=96)
    unfolded = tiny(fuser=registry_fuser(name, wrap=Unfolded), experts={"names": NAMES}, image_size=96)
    assert all(b.fusion.folded for b in folded.encoder.blocks)
    assert any(b.dim != b.dim_out for b in folded.encoder.blocks)
    for name_, tensors in zip(NAMES, randomise_experts(folded)):
        unfolded.load_expert(name_, tensors)
    images = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        out, reference = folded(images), unfolded(images)
    assert (out.embedding - reference.embedding).abs().max() < 1e-4
    assert all((a - b).abs().max() < 1e-4 for a, b in zip(out.high_res, reference.high_res))


def test_registry_sum_fuser_and_lorahub_merge():
    from samora_kit_plugins import fusion

    registry = load_plugins(extra=[fusion]).registry  # autoload may add the installed ones too
    spec = registry.get("fuser", "sum")
    factory = lambda dim, heads, names: spec.build(spec.example, dim=dim, num_heads=heads, expert_names=names)  # noqa
    backbone = tiny(fuser=factory, experts={"names": NAMES})
    experts = randomise_experts(backbone)
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(backbone(images).embedding,
                              reference_loop(backbone, experts, images, lambda d: d.sum(0))[2], atol=ATOL)

    merged = tiny(fuser=MergeFuser, experts={"names": NAMES})
    experts = randomise_experts(merged)
    w = [0.5, -1.0, 2.0]
    mix = {k: sum(wk * e[k] for wk, e in zip(w, experts)) for k in experts[0]}
    single = tiny()
    single.load_trainable_state_dict(mix)
    with torch.no_grad():
        single.encoder.pos_embed.copy_(merged.encoder.pos_embed)
        single.encoder.pos_embed_window.copy_(merged.encoder.pos_embed_window)
        assert torch.allclose(merged(images).embedding, single(images).embedding, atol=ATOL)


def test_expert_pack_round_trip(tmp_path):
    stage1 = tiny()
    with torch.no_grad():
        for layer in stage1.lora_layers().values():
            for t in ("q", "v"):
                layer.lora_b[t].weight.normal_(std=0.2)
    pack = stage1.expert_pack("image", pretext="image")
    assert pack.header["backbone"]["name"] == "sam2" and pack.header["backbone"]["depth"] == 6
    path = save_expert_pack(tmp_path / "image.safetensors", pack.tensors, pack.header)
    assert load_expert_pack(path).header == pack.header

    backbone = tiny(fuser=SumFuser, experts={"names": ["image"]})  # the same frozen base, position embeddings too
    backbone.load_expert_pack("image", path)
    assert all(torch.equal(backbone.expert_state("image")[k], v) for k, v in pack.tensors.items())
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(backbone(images).embedding, stage1(images).embedding, atol=ATOL)
    assert backbone.expert_pack("image").tensors.keys() == pack.tensors.keys()

    with pytest.raises(CheckpointError, match=r"lora\.rank is 4 in pack .*image\.safetensors, the backbone uses 2"):
        tiny(fuser=SumFuser, lora={"rank": 2}, experts={"names": ["image"], "packs": {"image": str(path)}})
    bad = dict(pack.tensors)
    bad["encoder.blocks.1.attn.qkv.lora_b.q.weight"] = torch.zeros(16, 4)
    with pytest.raises(CheckpointError, match=r"lora_b\.q\.weight has shape \(16, 4\), expected \(32, 4\)"):
        save_expert_pack(tmp_path / "bad.safetensors", bad, pack.header)


# --- config ----------------------------------------------------------------------------------------------

def test_config_errors_name_the_value_and_what_was_expected(tmp_path):
    with pytest.raises(ValidationError, match="variant"):
        Sam2BackboneConfig(variant="vit_b")
    with pytest.raises(ValidationError, match=r"image_size 100 must be a positive multiple of 32"):
        Sam2BackboneConfig(variant="tiny", image_size=100)
    root = OmegaConf.create((importlib.resources.files("sam2") / "configs/sam2.1/sam2.1_hiera_t.yaml").read_text())
    root.model.image_encoder.trunk.window_spec = [12, 4, 14, 7]
    OmegaConf.save(root, tmp_path / "w12.yaml")
    with pytest.raises(ValidationError, match=r"image_size 224 .*image_size/4 divisible by the first window size 12"):
        Sam2BackboneConfig(config_file=tmp_path / "w12.yaml")
    assert Sam2BackboneConfig(config_file=tmp_path / "w12.yaml", image_size=192).image_size == 192
    with pytest.raises(ValidationError, match=r"lora\.blocks \[6\] out of range: sam2 tiny.s trunk has blocks 0\.\.5"):
        Sam2BackboneConfig(variant="tiny", image_size=64, lora={"blocks": [0, 6]})
    with pytest.raises(ValidationError, match=r"experts\.scope 'block' is not implemented for the sam2 backbone"):
        Sam2BackboneConfig(variant="tiny", image_size=64, experts={"names": ["a"], "scope": "block"})
    with pytest.raises(ValidationError, match="extra"):
        Sam2BackboneConfig(variant="tiny", image_size=64, depth=3)
    with pytest.raises(SamoraError, match=r"missing\.yaml: no such file; expected a sam2 YAML config"):
        Sam2BackboneConfig(config_file=tmp_path / "missing.yaml")
    (tmp_path / "odd.yaml").write_text("model:\n  image_encoder:\n    trunk: {_target_: foo.Bar}\n")
    with pytest.raises(SamoraError, match=r"odd\.yaml: model\.image_encoder\.trunk\._target_ is 'foo\.Bar'"):
        Sam2BackboneConfig(config_file=tmp_path / "odd.yaml")
    (tmp_path / "bad.yaml").write_text("model: [1, 2\n")
    with pytest.raises(SamoraError, match=r"bad\.yaml: cannot be read as a YAML config"):
        Sam2BackboneConfig(config_file=tmp_path / "bad.yaml")


def test_a_config_that_reads_the_environment_is_refused_without_printing_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMORA_TEST_SECRET", "hunter2")
    text = (importlib.resources.files("sam2") / "configs/sam2.1/sam2.1_hiera_t.yaml").read_text()
    (tmp_path / "env.yaml").write_text(text.replace("embed_dim: 96", "embed_dim: ${oc.env:SAMORA_TEST_SECRET}", 1))
    with pytest.raises(SamoraError, match=r"env\.yaml: model\.image_encoder\.trunk\.embed_dim calls an OmegaConf "
                                          r"resolver") as caught:
        Sam2BackboneConfig(config_file=tmp_path / "env.yaml")
    assert "hunter2" not in str(caught.value)


def test_an_explicit_config_file_builds_that_architecture(tmp_path):
    text = (importlib.resources.files("sam2") / "configs/sam2.1/sam2.1_hiera_t.yaml").read_text()
    (tmp_path / "t.yaml").write_text(text)
    config = Sam2BackboneConfig(config_file=tmp_path / "t.yaml", variant="t")
    assert config.depth() == 12


@pytest.mark.parametrize("variant, params", [("t", 27_219_136), ("s", 34_316_992), ("b+", 69_106_816),
                                             ("l", 212_703_280)])
def test_packaged_configs_build_the_official_image_encoders(variant, params):
    ours = reference_encoder_state(variant)  # built on meta: names and shapes only
    official = instantiate(image_encoder_node(variant), _convert_="all")
    if variant in ("t", "s"):  # build the small ones for real and compare with hydra's instantiate
        assert {k: v.shape for k, v in ours.items()} == {
            f"image_encoder.{k}": v.shape for k, v in official.state_dict().items()}
    assert sum(v.numel() for v in ours.values()) == params  # trunk + neck; b+ ~69 M as sam2 says
    assert Sam2BackboneConfig(variant=variant).image_size == 224


def test_t_runs_at_224_px():
    with torch.no_grad():
        out = build_sam2_backbone(Sam2BackboneConfig(variant="t"))(torch.rand(1, 3, 224, 224))
    assert out.embedding.shape == (1, 256, 14, 14) and out.high_res[0].shape == (1, 256, 56, 56)


# --- official checkpoint import ----------------------------------------------------------------------------

def write_official_sam2(path, backbone: Sam2Backbone) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    state = {k: torch.randn(v.shape, generator=gen) * 0.1 for k, v in backbone.encoder_state_in_official_layout().items()}
    state.update({"sam_mask_decoder.conv_s0.weight": torch.randn(8, 32, 1, 1), "no_mem_embed": torch.zeros(1, 1, 32),
                  "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": torch.randn(2, 16)})
    torch.save({"model": state}, path)
    return state


def test_sam2_import_round_trip_equals_the_official_image_encoder(tmp_path):
    state = write_official_sam2(tmp_path / "sam2.1_tiny.pt", tiny())
    out, digest = import_checkpoint(tmp_path / "sam2.1_tiny.pt", tmp_path / "w" / "tiny.safetensors", format="sam2")
    tensors, header = read_sam_weights(out)
    assert header["format"] == "sam2" and header["variant"] == "tiny"
    assert sidecar_path(out).read_text().startswith(digest)
    assert torch.equal(tensors["no_mem_embed"], state["no_mem_embed"])

    images = torch.rand(2, 3, 64, 64)
    official = instantiate(image_encoder_node("tiny"), _convert_="all").eval()
    official.load_state_dict({k[len("image_encoder."):]: v for k, v in state.items() if k.startswith("image_encoder.")})
    for size in (64, 128):  # Hiera interpolates its position embedding: no resizing needed
        backbone = build_sam2_backbone(Sam2BackboneConfig(variant="tiny", image_size=size, checkpoint=out))
        images = torch.rand(2, 3, size, size)
        with torch.no_grad():
            ours, expected = backbone(images), official_pyramid(official, images)
        assert torch.allclose(ours.embedding, expected[2], atol=ATOL)
        assert all(torch.allclose(a, b, atol=ATOL) for a, b in zip(ours.high_res, expected[:2]))

    with pytest.raises(CheckpointError, match=r"holds a SAM2 'tiny' image encoder, but .* variant 't'"):
        build_sam2_backbone(Sam2BackboneConfig(variant="t", checkpoint=out))
    with pytest.raises(CheckpointError, match=r"holds a SAM2 tiny image encoder, but variant 'b\+' was requested"):
        import_checkpoint(tmp_path / "sam2.1_tiny.pt", tmp_path / "x.safetensors", "b+", format="sam2")


def test_cli_weights_import_takes_the_sam2_format(tmp_path, capsys):
    from samora_kit.cli import main

    write_official_sam2(tmp_path / "tiny.pt", tiny())
    code = main(["weights", "import", str(tmp_path / "tiny.pt"), str(tmp_path / "tiny.safetensors"),
                 "--format", "sam2", "--variant", "tiny"])
    assert code == 0 and "sha256" in capsys.readouterr().out
    assert read_sam_weights(tmp_path / "tiny.safetensors")[1]["variant"] == "tiny"


def test_sam2_import_names_the_first_missing_or_misshaped_key(tmp_path):
    state = write_official_sam2(tmp_path / "ok.pt", tiny())
    del state["image_encoder.trunk.blocks.3.attn.qkv.weight"]
    torch.save({"model": state}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError,
                       match=r"partial\.pt .*missing image_encoder\.trunk\.blocks\.3\.attn\.qkv\.weight"):
        import_checkpoint(tmp_path / "partial.pt", tmp_path / "p.safetensors", format="sam2")
    state["image_encoder.trunk.blocks.3.attn.qkv.weight"] = torch.zeros(3, 3)
    torch.save({"model": state}, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match=r"image_encoder\.trunk\.blocks\.3\.attn\.qkv\.weight has shape \(3, 3\)"):
        import_checkpoint(tmp_path / "shape.pt", tmp_path / "s.safetensors", format="sam2")
    torch.save({"model": {"fc.weight": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt: missing image_encoder\.trunk\.patch_embed"):
        import_checkpoint(tmp_path / "other.pt", tmp_path / "o.safetensors", format="sam2")


def test_sam2_backbone_is_registered_with_a_working_example(monkeypatch):
    monkeypatch.setenv(DISABLE_AUTOLOAD, "1")
    spec = load_plugins(extra=[sam2_plugin]).registry.get("backbone", "sam2")
    backbone = spec.build(spec.example)
    assert isinstance(backbone, Sam2Backbone) and backbone.embed_grid == 4
