"""Stage 2: frozen LoRA experts fused inside every SAM block, batched, and expert packs."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from segment_anything.modeling.image_encoder import window_partition, window_unpartition
from torch import nn

from samora_kit.errors import CheckpointError, SamoraError
from samora_kit.weights.io import load_weights, save_weights
from samora_kit_plugins.lora.expert_pack import ExpertPack, check_compatible, load_expert_pack, save_expert_pack
from samora_kit_plugins.sam import (LoRAQKV, SamBackbone, SamBackboneConfig, build_image_encoder,
                                    build_sam_backbone, sam_attention_sdpa)

NAMES = ["image", "patch", "pixel"]
ATOL = 1e-5


# --- fusers written for these tests (the real ones live in plugins/fusion) -----------------------------

class SumFuser(nn.Module):
    """Sums the deltas it is given (after the projection: it has no fold_projection)."""

    def __init__(self, dim: int, num_heads: int, expert_names: list[str]) -> None:
        super().__init__()
        self.dim, self.num_heads = dim, num_heads
        self.shapes: list[tuple[int, ...]] = []
        self.valid: list[torch.Tensor | None] = []

    def forward(self, deltas: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        self.shapes.append(tuple(deltas.shape))
        self.valid.append(valid)
        return deltas.sum(0)


class ZeroProjFuser(nn.Module):
    """A zero-initialised projection of the summed deltas: output zero, gradients not."""

    def __init__(self, dim: int, num_heads: int, expert_names: list[str]) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, deltas: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        return self.proj(deltas.sum(0))


class MergeFuser(nn.Module):
    init = (0.5, -1.0, 2.0)

    def __init__(self, dim: int, num_heads: int, expert_names: list[str]) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.tensor(self.init[:len(expert_names)]))

    def mixing_weights(self) -> torch.Tensor:
        return self.weights

    def forward(self, deltas: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        raise AssertionError("a merging fuser is never called on deltas")


class Unfolded(nn.Module):
    """Hides a fuser's fold_projection: the block then projects every variant and hands it D_i."""

    def __init__(self, fuser: nn.Module) -> None:
        super().__init__()
        self.inner = fuser

    def forward(self, deltas: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        return self.inner(deltas, valid=valid)


def registry_fuser(name: str, wrap=None, seed: int = 0):
    """A fuser factory for registry fuser `name` (tiny example config) whose parameters are all random
    (gates open), the same sequence on every call of this function; `wrap` wraps each fuser."""
    from samora_kit.plugins import load_plugins

    spec = load_plugins().registry.get("fuser", name)
    gen = torch.Generator().manual_seed(seed)

    def make(dim: int, num_heads: int, expert_names: list[str]) -> nn.Module:
        fuser = spec.build(spec.example, dim=dim, num_heads=num_heads, expert_names=expert_names)
        with torch.no_grad():
            for p in fuser.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        return wrap(fuser) if wrap else fuser

    return make


# --- helpers -------------------------------------------------------------------------------------------

def config(image_size: int = 64, **overrides) -> SamBackboneConfig:
    return SamBackboneConfig.model_validate({"variant": "tiny", "image_size": image_size, **overrides})


def stage2(fuser=SumFuser, image_size: int = 64, scope: str = "attention", names=NAMES, packs=None,
           seed: int = 0, experts_check_base: bool = True, **overrides) -> SamBackbone:
    torch.manual_seed(seed)
    experts = {"names": names, "scope": scope, "packs": packs or {}, "check_base": experts_check_base}
    backbone = build_sam_backbone(config(image_size, experts=experts, **overrides), fuser=fuser)
    with torch.no_grad():  # SAM zero-initialises these: make the relative positions matter
        for name, p in backbone.encoder.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.1)
    return backbone


def randomise_experts(backbone: SamBackbone, seed: int = 1) -> dict[str, dict[str, torch.Tensor]]:
    """Give every expert a non-zero B; return each expert's tensors (pack layout)."""
    gen = torch.Generator().manual_seed(seed)
    experts = {}
    for name in backbone.expert_names:
        state = backbone.expert_state(name)
        state = {k: torch.randn(v.shape, generator=gen) * 0.2 if ".lora_b." in k else v for k, v in state.items()}
        backbone.load_expert(name, state)
        experts[name] = state
    return experts


def frozen_copy(backbone: SamBackbone) -> nn.Module:
    """segment-anything's own encoder with the backbone's frozen weights."""
    encoder = build_image_encoder(backbone.variant, backbone.image_size)
    state = {k.replace(".qkv.base.", ".qkv."): v for k, v in backbone.encoder.state_dict().items()
             if ".expert_" not in k and ".fuser." not in k}
    encoder.load_state_dict(state)
    return encoder.eval()


def with_lora(block, index: int, expert: dict | None, run):
    """run() with SAM's original block, its qkv wrapped in one LoRA holding `expert`'s tensors."""
    if expert is None:
        return run()
    base = block.attn.qkv
    lora = LoRAQKV(base, rank=4, targets=("q", "v"))
    with torch.no_grad():
        for t in ("q", "v"):
            for ab in "ab":
                key = f"encoder.blocks.{index}.attn.qkv.lora_{ab}.{t}.weight"
                getattr(lora, f"lora_{ab}")[t].weight.copy_(expert[key])
    block.attn.qkv = lora
    try:
        return run()
    finally:
        block.attn.qkv = base


def attention_branch(block, x):
    """The first half of segment-anything's Block.forward."""
    h = block.norm1(x)
    if block.window_size > 0:
        size = h.shape[1:3]
        h, pad = window_partition(h, block.window_size)
    h = block.attn(h)
    if block.window_size > 0:
        h = window_unpartition(h, block.window_size, pad, size)
    return h


@torch.no_grad()
def reference_sum(encoder, experts: list[dict], scope: str, images: torch.Tensor) -> torch.Tensor:
    """K+1 plain runs of each original block (frozen, then each expert's LoRA), summed deltas."""
    x = encoder.patch_embed(images) + encoder.pos_embed
    for i, block in enumerate(encoder.blocks):
        if scope == "block":
            outs = [with_lora(block, i, e, lambda: block(x)) for e in [None, *experts]]
            x = outs[0] + sum(o - outs[0] for o in outs[1:])
        else:
            outs = [with_lora(block, i, e, lambda: attention_branch(block, x)) for e in [None, *experts]]
            x = x + outs[0] + sum(o - outs[0] for o in outs[1:])
            x = x + block.mlp(block.norm2(x))
    return encoder.neck(x.permute(0, 3, 1, 2))


# --- tests ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scope", ["attention", "block"])
@pytest.mark.parametrize("image_size", [64, 160])  # 4x4 grid: one padded window; 10x10: four padded windows
def test_batched_experts_equal_a_plain_per_expert_loop(scope, image_size):
    backbone = stage2(SumFuser, image_size, scope)
    experts = randomise_experts(backbone)
    images = torch.rand(2, 3, image_size, image_size)
    with torch.no_grad():
        fused = backbone(images)
    reference = reference_sum(frozen_copy(backbone), [experts[n] for n in NAMES], scope, images)
    frozen = frozen_copy(backbone)(images)
    assert (reference - frozen).abs().max() > 1e-2  # the experts do change the output
    assert torch.allclose(fused, reference, atol=ATOL), (fused - reference).abs().max()


@pytest.mark.parametrize("scope", ["attention", "block"])
def test_fuser_sees_windows_in_windowed_blocks_and_all_tokens_in_global_blocks(scope):
    backbone = stage2(SumFuser, 160, scope)  # 10x10 grid; window 7 -> padded to 14x14, 4 windows
    with torch.no_grad():
        backbone(torch.rand(2, 3, 160, 160))
    fusers = backbone.fusers()
    assert sorted(fusers) == [0, 1, 2, 3]
    for windowed in (0, 2):
        assert fusers[windowed].shapes == [(3, 2 * 4, 49, 96)]
        (valid,) = fusers[windowed].valid  # 10 x 10 real tokens of each image in 4 windows of 7 x 7
        assert valid.shape == (8, 49) and valid.sum() == 2 * 100
        assert valid.view(2, 2, 2, 7, 7)[:, 0, 0].all() and not valid.view(2, 2, 2, 7, 7)[:, 1, 1, 3:].any()
    for global_block in (1, 3):
        assert fusers[global_block].shapes == [(3, 2, 100, 96)]
        assert fusers[global_block].valid == [None]


@pytest.mark.parametrize("name", ["hl_attn", "sum", "lac", "mole"])
@pytest.mark.parametrize("image_size", [64, 160])  # padded windows; 160: four windows per image
def test_folded_projection_equals_projecting_every_expert(name, image_size):
    """P folded into the fuser (P once per block) == every variant projected and D_i = P(a_i) - P(a_0)."""
    folded = stage2(registry_fuser(name), image_size)
    unfolded = stage2(registry_fuser(name, wrap=Unfolded), image_size)
    assert all(b.fusion.folded for b in folded.encoder.blocks)
    assert not any(b.fusion.folded for b in unfolded.encoder.blocks)
    for expert, tensors in randomise_experts(folded).items():
        unfolded.load_expert(expert, tensors)
    images = torch.rand(2, 3, image_size, image_size)
    with torch.no_grad():
        out, reference = folded(images), unfolded(images)
        assert (reference - frozen_copy(folded)(images)).abs().max() > 1e-2  # the fused experts matter
    assert torch.allclose(out, reference, atol=1e-4), (out - reference).abs().max()


@pytest.mark.parametrize("scope", ["attention", "block"])
def test_zero_fuser_gives_the_frozen_encoder_output(scope):
    backbone = stage2(ZeroProjFuser, 64, scope)
    randomise_experts(backbone)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(backbone(images), frozen_copy(backbone)(images), atol=ATOL)


def test_only_fuser_is_trainable_and_expert_weights_stay_bit_identical_after_steps():
    backbone = stage2(ZeroProjFuser, 64)
    randomise_experts(backbone)
    trainable = {n: p for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable and all(".fuser." in n for n in trainable)
    assert len(trainable) == 4 * 2  # 4 blocks x (weight, bias)
    assert set(backbone.trainable_state_dict()) == set(trainable)
    assert "encoder.blocks.0.fuser.proj.weight" in trainable
    # the experts are frozen buffers: in full saves, never in parameters() nor trainable_state_dict()
    full = backbone.state_dict()
    assert full["encoder.blocks.0.attn.qkv.expert_a"].shape == (2, 3, 4, 96)  # targets, experts, rank, C
    assert full["encoder.blocks.0.attn.qkv.expert_b"].shape == (2, 3, 96, 4)
    assert not any(".expert_" in n for n, _ in backbone.named_parameters())
    before = {k: v.clone() for k, v in full.items()}

    optimizer = torch.optim.AdamW([p for p in backbone.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        backbone(torch.rand(2, 3, 64, 64)).square().mean().backward()
        assert all(p.grad is None for n, p in backbone.named_parameters() if n not in trainable)
        optimizer.step()

    after = backbone.state_dict()
    frozen_keys = [k for k in before if ".fuser." not in k]
    assert any(".expert_b" in k for k in frozen_keys)
    assert all(torch.equal(before[k], after[k]) for k in frozen_keys)
    assert not torch.equal(before["encoder.blocks.2.fuser.proj.weight"], after["encoder.blocks.2.fuser.proj.weight"])

    other = stage2(ZeroProjFuser, 64)
    other.load_trainable_state_dict(backbone.trainable_state_dict())
    assert all(torch.equal(v, other.trainable_state_dict()[k]) for k, v in backbone.trainable_state_dict().items())


def test_expert_pack_round_trip(tmp_path):
    torch.manual_seed(0)
    stage1 = build_sam_backbone(config())
    with torch.no_grad():
        for layer in stage1.lora_layers().values():
            for t in ("q", "v"):
                layer.lora_b[t].weight.normal_(std=0.2)
    pack = stage1.expert_pack("image", pretext="image", teacher="simclrv2_r50_2x_sk1", teacher_cpt=True,
                              data_fingerprint="sha256:abc")
    assert set(pack.tensors) == set(stage1.trainable_state_dict())
    header = pack.header
    assert header["kind"] == "expert-pack" and header["expert"] == "image"
    assert header["backbone"] == stage1.shape_description() == {
        "name": "sam", "variant": "tiny", "image_size": 64, "embed_dim": 96, "depth": 4}
    assert header["lora"] == {"rank": 4, "targets": ["q", "v"], "blocks": [0, 1, 2, 3]}
    assert (header["pretext"], header["teacher"], header["teacher_cpt"], header["data_fingerprint"]) == (
        "image", "simclrv2_r50_2x_sk1", True, "sha256:abc")
    assert {"samora_kit", "torch"} <= set(header["versions"])

    path = save_expert_pack(tmp_path / "image.safetensors", pack.tensors, pack.header)
    loaded = load_expert_pack(path)
    assert isinstance(loaded, ExpertPack) and loaded.header == pack.header
    assert set(loaded.tensors) == set(pack.tensors)
    assert all(torch.equal(loaded.tensors[k], v) for k, v in pack.tensors.items())

    # stage 2 reads it back bit for bit; with it as the only expert, sum fusion = the stage-1 LoRA backbone
    backbone = stage2(SumFuser, 64, names=["image"], packs={"image": path}, seed=0)
    assert all(torch.equal(backbone.expert_state("image")[k], v) for k, v in pack.tensors.items())
    torch.manual_seed(0)
    stage1_again = build_sam_backbone(config())
    stage1_again.load_trainable_state_dict(pack.tensors)
    with torch.no_grad():
        for name, p in stage1_again.encoder.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.copy_(dict(backbone.encoder.named_parameters())[name])
        images = torch.rand(2, 3, 64, 64)
        assert torch.allclose(backbone(images), stage1_again(images), atol=ATOL)
    assert backbone.expert_pack("image").tensors.keys() == pack.tensors.keys()

    # a file of another kind is refused
    save_weights(tmp_path / "sam.safetensors", pack.tensors, {"format": "segment-anything"})
    with pytest.raises(CheckpointError, match=r"sam\.safetensors: header kind is None, expected 'expert-pack'"):
        load_expert_pack(tmp_path / "sam.safetensors")
    with pytest.raises(TypeError, match="unknown provenance"):
        stage1.expert_pack("image", teacher_weights="x")


def test_incompatible_pack_names_the_mismatch(tmp_path):
    torch.manual_seed(0)
    pack = build_sam_backbone(config()).expert_pack("image", pretext="image")
    path = save_expert_pack(tmp_path / "image.safetensors", pack.tensors, pack.header)

    with pytest.raises(CheckpointError, match=r"lora\.rank is 4 in pack .*image\.safetensors, the backbone uses 2"):
        stage2(packs={"image": path}, lora={"rank": 2})
    with pytest.raises(CheckpointError, match=r"lora\.targets is \['q', 'v'\] in pack .*, the backbone uses \['q'\]"):
        stage2(packs={"image": path}, lora={"targets": ["q"]})
    with pytest.raises(CheckpointError, match=r"lora\.blocks is \[0, 1, 2, 3\] in pack .*, the backbone uses \[1, 3\]"):
        stage2(packs={"image": path}, lora={"blocks": [3, 1]})
    with pytest.raises(CheckpointError, match=r"backbone\.image_size is 64 in pack .*, the backbone uses 112"):
        stage2(image_size=112, packs={"image": path})
    with pytest.raises(CheckpointError, match=r"expert is 'image' in pack .*, but it is configured as expert 'patch'"):
        stage2(packs={"patch": path})

    shape = {"name": "sam", "variant": "vit_b", "image_size": 64, "embed_dim": 768, "depth": 12}
    with pytest.raises(CheckpointError, match=r"backbone\.variant is 'tiny' in pack P, the backbone uses 'vit_b'"):
        check_compatible(pack, shape, pack.lora, "P")

    truncated = {k: v for k, v in pack.tensors.items() if "blocks.3." not in k}
    save_weights(tmp_path / "truncated.safetensors", truncated, load_weights(path)[1])
    with pytest.raises(CheckpointError,
                       match=r"truncated\.safetensors lacks tensor encoder\.blocks\.3\.attn\.qkv\.lora_a\.q"):
        stage2(packs={"image": tmp_path / "truncated.safetensors"})
    with pytest.raises(CheckpointError, match=r"lacks tensor"):
        save_expert_pack(tmp_path / "bad.safetensors", truncated, pack.header)


def test_a_pack_refuses_a_base_it_was_not_trained_on(tmp_path):
    torch.manual_seed(0)
    stage1 = build_sam_backbone(config())
    pack = stage1.expert_pack("image", pretext="image")
    assert pack.header["base_fingerprint"] == stage1.base_fingerprint()
    path = save_expert_pack(tmp_path / "image.safetensors", pack.tensors, pack.header)
    assert stage2(packs={"image": path}, names=["image"], seed=0).expert_names == ["image"]  # the same base
    torch.manual_seed(1)  # another random base
    other = build_sam_backbone(config(experts={"names": ["image"]}), fuser=SumFuser).base_fingerprint()
    assert other != pack.header["base_fingerprint"]
    with pytest.raises(CheckpointError, match=rf"image\.safetensors: expert 'image' was trained on the base with "
                                              rf"fingerprint {pack.header['base_fingerprint']}, but this backbone's "
                                              rf"frozen weights have fingerprint {other}.*check_base = false"):
        stage2(packs={"image": path}, names=["image"], seed=1)
    assert stage2(packs={"image": path}, names=["image"], seed=1, experts_check_base=False).expert_names == ["image"]
    old = {k: v for k, v in pack.header.items() if k != "base_fingerprint"}  # a pack from before fingerprints
    save_expert_pack(tmp_path / "old.safetensors", pack.tensors, old)
    with pytest.warns(UserWarning, match="does not record the base it was trained on"):
        stage2(packs={"image": tmp_path / "old.safetensors"}, names=["image"], seed=1)


@pytest.mark.parametrize("scope", ["attention", "block"])
def test_lorahub_style_merge_equals_single_merged_lora(scope):
    backbone = stage2(MergeFuser, 64, scope)
    experts = randomise_experts(backbone)
    w = MergeFuser.init
    merged = {k: sum(w[i] * experts[n][k] for i, n in enumerate(NAMES)) for k in experts["image"]}
    single = build_sam_backbone(config())
    single.encoder.load_state_dict({k: v for k, v in backbone.encoder.state_dict().items()
                                    if ".expert_" not in k and ".fuser." not in k}, strict=False)
    single.load_trainable_state_dict(merged)
    images = torch.rand(2, 3, 64, 64)
    out = backbone(images)
    with torch.no_grad():
        assert torch.allclose(out, single(images), atol=ATOL)
    out.square().mean().backward()
    assert all(f.weights.grad is not None and f.weights.grad.abs().sum() > 0 for f in backbone.fusers().values())


@pytest.mark.parametrize("block, shape", [(0, (4, 7, 7, 96)), (1, (2, 10, 10, 96))])  # windowed, global
def test_sdpa_attention_matches_sam_attention(block, shape):
    torch.manual_seed(0)
    attn = build_image_encoder("tiny", 160).blocks[block].attn
    with torch.no_grad():
        attn.rel_pos_h.normal_(std=0.5)
        attn.rel_pos_w.normal_(std=0.5)
    x = torch.randn(shape)
    with torch.no_grad():
        assert torch.allclose(sam_attention_sdpa(attn, x), attn(x), atol=ATOL)


def test_experts_need_a_fuser_and_valid_names():
    with pytest.raises(SamoraError, match=r"backbone\.experts \['image'\] is configured, so a fuser is required"):
        build_sam_backbone(config(experts={"names": ["image"]}))
    with pytest.raises(SamoraError, match="a fuser was given, but backbone.experts is not configured"):
        build_sam_backbone(config(), fuser=SumFuser)
    with pytest.raises(ValidationError, match="repeats 'image'"):
        config(experts={"names": ["image", "image"]})
    with pytest.raises(ValidationError, match=r"experts\.packs names 'pixel', which is not in experts\.names"):
        config(experts={"names": ["image"], "packs": {"pixel": "pixel.safetensors"}})
    with pytest.raises(ValidationError):
        config(experts={"names": []})
    with pytest.raises(ValidationError):
        config(experts={"names": ["image"], "scope": "mlp"})
    class NoMask(nn.Module):  # a fuser written before the padding mask existed
        def forward(self, deltas):
            return deltas.sum(0)

    with pytest.raises(SamoraError, match=r"NoMask\.forward must accept the keyword `valid`"):
        stage2(lambda dim, heads, names: NoMask())
    # unpacked experts start as SAMed LoRA: B = 0, so stage 2 begins at the frozen encoder
    backbone = stage2(SumFuser, 64)
    assert all(not v.any() for k, v in backbone.expert_state("patch").items() if ".lora_b." in k)


class Fixed(nn.Module):
    """Stands in for attn.qkv: returns a precomputed projection."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value


@pytest.mark.parametrize("targets", [("q", "v"), ("q",), ("v",), ("k", "v"), ("q", "k", "v")])
@pytest.mark.parametrize("window", [0, 4])  # 0: rel-pos tables interpolated (6x6 -> 4x4); 4: exact
def test_variants_attention_equals_sam_attention_per_variant(targets, window):
    """The batched K+1-variant attention (shared k/v not copied, relative positions folded into
    the q.k matmul) equals SAM's own Attention run once per variant, values and gradients."""
    from samora_kit_plugins.lora.experts_qkv import ExpertsQKV
    from samora_kit_plugins.sam.variant_attention import low_rank_variants_attention, variants_attention
    from segment_anything.modeling.image_encoder import Block

    torch.manual_seed(0)
    block = Block(32, num_heads=4, use_rel_pos=True, window_size=window, input_size=(6, 6))
    with torch.no_grad():
        block.attn.rel_pos_h.normal_(0, 0.3)
        block.attn.rel_pos_w.normal_(0, 0.3)
    attn = block.attn
    qkv = ExpertsQKV(attn.qkv, NAMES, rank=2, targets=targets)
    with torch.no_grad():
        qkv.expert_b.normal_(0, 0.3)
    x = torch.randn(3, 4, 4, 32, requires_grad=True)
    q, k, v = qkv.variants(x, shared=True)
    out = attn.proj(variants_attention(attn, *(t.reshape(t.shape[0], 3, 16, 32) for t in (q, k, v)), (4, 4)))
    qe, ke, ve = qkv.variants(x)
    base = attn.qkv
    try:
        refs = []
        for i in range(len(NAMES) + 1):
            attn.qkv = Fixed(torch.cat([qe[i], ke[i], ve[i]], dim=-1))
            refs.append(attn(x).reshape(3, 16, 32))
    finally:
        attn.qkv = base
    reference = torch.stack(refs)
    outputs = [out]
    if qkv.low_rank_q:  # q changed by rank-r terms, k frozen: the logits as corrections of the frozen ones
        q0, u, b, k, v = qkv.factored_variants(x.reshape(3, 16, 32))
        outputs.append(attn.proj(low_rank_variants_attention(attn, q0, u, b, k, v, (4, 4))))
    weight = torch.randn_like(out)
    (grad_ref,) = torch.autograd.grad((reference * weight).sum(), x, retain_graph=True)
    for out in outputs:
        assert out.shape == reference.shape
        assert torch.allclose(out, reference, atol=ATOL), (out - reference).abs().max()
        (grad,) = torch.autograd.grad((out * weight).sum(), x, retain_graph=True)
        assert torch.allclose(grad, grad_ref, atol=1e-4), (grad - grad_ref).abs().max()
    assert len(outputs) == 1 + qkv.low_rank_q
