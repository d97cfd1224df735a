"""SAM's attention on the fused SDPA kernel (relative positions folded into q and k) against
segment-anything's own Attention; the batched expert attention; SAM2's attention on SDPA."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention
from torch import nn

from samora_kit_plugins.lora.experts_qkv import ExpertsQKV
from samora_kit_plugins.sam import RelPosSdpaAttention, build_image_encoder, build_sam_backbone, sam_attention_sdpa
from samora_kit_plugins.sam import rel_pos_attention
from samora_kit_plugins.sam.config import SamBackboneConfig
from samora_kit_plugins.sam.rel_pos_attention import fused_kernel_pays
from samora_kit_plugins.sam.variant_attention import low_rank_variants_attention, variants_attention

ATOL = 1e-5
BF16_ATOL = 3e-2  # a few units of bf16's 2^-8 relative step on outputs of size ~1
CPU_KEYS = list(rel_pos_attention.CPU_EXPLICIT_MAX_TOKENS)


def attention(image_size: int, block: int, seed: int = 0) -> Attention:
    """Block `block`'s attention of a tiny SAM encoder (window 7; blocks 1 and 3 global), with
    non-zero relative positions (SAM zero-initialises them)."""
    torch.manual_seed(seed)
    attn = build_image_encoder("tiny", image_size).blocks[block].attn
    with torch.no_grad():
        attn.rel_pos_h.normal_(std=0.5)
        attn.rel_pos_w.normal_(std=0.5)
    return attn


# image size, block, the attention's input (windows or images, h, w, C): 64 px and 160 px, windowed
# (7 x 7 windows) and global (4 x 4, 10 x 10 tokens); the last one's rel-pos tables are interpolated
SHAPES = [(64, 0, (4, 7, 7, 96)), (64, 1, (2, 4, 4, 96)), (160, 0, (8, 7, 7, 96)), (160, 1, (2, 10, 10, 96)),
          (160, 3, (2, 6, 6, 96))]


@pytest.mark.parametrize("image_size, block, shape", SHAPES)
def test_fused_attention_equals_segment_anything_attention_with_gradients(image_size, block, shape):
    attn = attention(image_size, block)
    x = torch.randn(shape, requires_grad=True)
    params = [x, attn.qkv.weight, attn.rel_pos_h, attn.rel_pos_w]
    reference = Attention.forward(attn, x)
    out = sam_attention_sdpa(attn, x)
    assert torch.allclose(out, reference, atol=ATOL), (out - reference).abs().max()
    weight = torch.randn_like(reference)
    grads_ref = torch.autograd.grad((reference * weight).sum(), params)
    grads = torch.autograd.grad((out * weight).sum(), params)
    for grad, grad_ref in zip(grads, grads_ref):
        assert torch.allclose(grad, grad_ref, atol=1e-4), (grad - grad_ref).abs().max()


@pytest.mark.parametrize("precision", ["autocast", "bf16 tensors"])
@pytest.mark.parametrize("image_size, block, shape", SHAPES[:4])
def test_fused_attention_keeps_sam_numbers_in_bf16(image_size, block, shape, precision):
    """In bf16 the fused kernel is as close to SAM's fp32 output as SAM's own bf16 run is."""
    attn = attention(image_size, block)
    x = torch.randn(shape)
    with torch.no_grad():
        exact = Attention.forward(attn, x)
        if precision == "autocast":
            with torch.autocast("cpu", torch.bfloat16):
                reference, out = Attention.forward(attn, x), sam_attention_sdpa(attn, x)
        else:
            attn.to(torch.bfloat16)
            reference, out = Attention.forward(attn, x.bfloat16()), sam_attention_sdpa(attn, x.bfloat16())
    assert out.dtype == reference.dtype == torch.bfloat16
    assert torch.allclose(out.float(), reference.float(), atol=BF16_ATOL), (out.float() - reference.float()).abs().max()
    own_error = (reference.float() - exact).abs().max()
    assert (out.float() - exact).abs().max() <= 2 * own_error + 1e-3


def test_bf16_gradients_agree_with_segment_anything():
    attn = attention(160, 1)
    x = torch.randn(2, 10, 10, 96, requires_grad=True)
    weight = torch.randn(2, 10, 10, 96)
    grads = []
    for run in (Attention.forward, sam_attention_sdpa):
        with torch.autocast("cpu", torch.bfloat16):
            out = run(attn, x)
        grads.append(torch.autograd.grad((out.float() * weight).sum(), (x, attn.rel_pos_h))[0:2])
    for grad, grad_ref in zip(grads[1], grads[0]):
        scale = grad_ref.abs().max()
        assert (grad - grad_ref).abs().max() <= 0.05 * scale


def test_backbone_runs_the_fused_attention_with_segment_anything_names():
    """Every block of the backbone gets RelPosSdpaAttention (so parameter names stay SAM's); its output,
    in inference and in a training forward, is the one segment-anything's Attention gives."""
    torch.manual_seed(0)
    backbone = build_sam_backbone(SamBackboneConfig.model_validate({"variant": "tiny", "image_size": 160}))
    with torch.no_grad():
        for p in backbone.encoder.parameters():
            p.normal_(std=0.1)
    assert all(type(block.attn) is RelPosSdpaAttention for block in backbone.encoder.blocks)
    official = copy.deepcopy(backbone.encoder)
    for block in official.blocks:
        block.attn.__class__ = Attention
    assert official.state_dict().keys() == backbone.encoder.state_dict().keys()
    images = torch.rand(2, 3, 160, 160)
    reference = official(images)
    with torch.no_grad():
        assert torch.allclose(backbone(images), reference, atol=1e-4)
    assert torch.allclose(backbone(images), reference, atol=1e-4)


@pytest.mark.parametrize("targets", [("q", "v"), ("q",), ("k", "v")])
@pytest.mark.parametrize("hw, window", [((7, 7), 7), ((5, 5), 0)])  # 0: global, rel-pos tables interpolated
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_batched_expert_attention_equals_segment_anything_per_variant(targets, hw, window, precision):
    """The fused K+1-variant attention (and the explicit rank-r form, when the experts leave k frozen)
    equals segment-anything's Attention run once per variant, values and gradients."""
    attn, qkv = _experts_attention(targets)
    length = hw[0] * hw[1]
    x = torch.randn(3, length, 96, requires_grad=True)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    with torch.autocast("cpu", dtype, enabled=precision == "bf16"):
        qe, ke, ve = qkv.variants(x)
        reference = torch.stack([_per_variant(attn, q, k, v, hw) for q, k, v in zip(qe, ke, ve)])
        outputs = [variants_attention(attn, *qkv.variants(x, shared=True), hw)]
        if qkv.low_rank_q:
            outputs.append(low_rank_variants_attention(attn, *qkv.factored_variants(x), hw))
    atol = BF16_ATOL if precision == "bf16" else ATOL
    weight = torch.randn(reference.shape)
    (grad_ref,) = torch.autograd.grad((reference.float() * weight).sum(), x, retain_graph=True)
    for out in outputs:
        assert out.shape == reference.shape
        assert torch.allclose(out.float(), reference.float(), atol=atol), (out.float() - reference.float()).abs().max()
        (grad,) = torch.autograd.grad((out.float() * weight).sum(), x, retain_graph=True)
        assert (grad - grad_ref).abs().max() <= (0.05 if precision == "bf16" else 1e-4) * grad_ref.abs().max()


@pytest.mark.parametrize("pairs_per_chunk", [1, 2, 100])  # 3 images x 3 heads: 9, 5 (the last one short), 1 chunk
def test_explicit_expert_attention_in_chunks_equals_segment_anything_without_gradient(pairs_per_chunk):
    """Inference runs the explicit rank-r variants a cache-sized chunk of (image, head) pairs at a time;
    whatever the chunk size, the result is segment-anything's Attention run once per variant."""
    attn, qkv = _experts_attention(("q", "v"))
    hw = (7, 7)
    x = torch.randn(3, 49, 96)
    with torch.no_grad():
        reference = torch.stack([_per_variant(attn, q, k, v, hw) for q, k, v in zip(*qkv.variants(x))])
        out = low_rank_variants_attention(attn, *qkv.factored_variants(x), hw, chunk_bytes=pairs_per_chunk * 49 * 49 * 4)
    assert torch.allclose(out, reference, atol=ATOL), (out - reference).abs().max()


def _experts_attention(targets: tuple[str, ...]) -> tuple[Attention, ExpertsQKV]:
    """A 96-wide, 3-head SAM attention on 7 x 7 tokens with non-zero relative positions, and three rank-2
    experts on `targets` with non-zero B (both start at zero in SAM and LoRA)."""
    torch.manual_seed(0)
    attn = Attention(96, num_heads=3, use_rel_pos=True, input_size=(7, 7))
    with torch.no_grad():
        attn.rel_pos_h.normal_(0, 0.3)
        attn.rel_pos_w.normal_(0, 0.3)
    qkv = ExpertsQKV(attn.qkv, ["a", "b", "c"], rank=2, targets=targets)
    with torch.no_grad():
        qkv.expert_b.normal_(0, 0.3)
    return attn, qkv


def _per_variant(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 hw: tuple[int, int]) -> torch.Tensor:
    """segment-anything's Attention.forward on a given qkv (q, k, v: n, L, C) -> n, L, C before proj."""
    projections = attn.qkv, attn.proj
    attn.qkv = attn.proj = nn.Identity()
    try:
        return Attention.forward(attn, torch.cat([q, k, v], dim=-1).view(q.shape[0], *hw, -1)).reshape(q.shape)
    finally:
        attn.qkv, attn.proj = projections


def test_sam2_attention_runs_on_sdpa(monkeypatch):
    """Hiera's MultiScaleAttention and the batched expert variants both call SDPA, once per block."""
    pytest.importorskip("sam2")
    from samora_kit_plugins.sam2 import Sam2BackboneConfig, build_sam2_backbone

    from .test_experts import SumFuser

    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    for experts in (None, {"names": ["image", "patch"]}):
        torch.manual_seed(0)
        config = Sam2BackboneConfig.model_validate({"variant": "tiny", "image_size": 64, "experts": experts})
        backbone = build_sam2_backbone(config, fuser=SumFuser if experts else None)
        calls.clear()
        with torch.no_grad():
            backbone(torch.rand(1, 3, 64, 64))
        assert len(calls) == len(backbone.encoder.blocks)


def test_the_kernel_choice_follows_the_device_and_the_measured_token_counts():
    cpu, meta = torch.empty(0), torch.empty(0, device="meta")  # meta stands in for an accelerator
    assert fused_kernel_pays(cpu, 196, needs_grad=False)  # one attention, inference: always fused
    assert not fused_kernel_pays(cpu, 196, needs_grad=True) and fused_kernel_pays(cpu, 1024, needs_grad=True)
    assert not fused_kernel_pays(cpu, 196, needs_grad=False, low_rank=True)
    assert not fused_kernel_pays(cpu, 1024, needs_grad=True, low_rank=True)
    assert fused_kernel_pays(cpu, 4096, needs_grad=True, low_rank=True)
    assert all(fused_kernel_pays(meta, 196, grad, low) for grad in (False, True) for low in (False, True))


@pytest.mark.parametrize("experts", [None, {"names": ["image", "patch", "pixel"]}])
def test_either_kernel_gives_the_backbone_the_same_output(monkeypatch, experts):
    """Forcing the fused kernel everywhere, or the explicit softmax (rank-r logits in fused expert blocks)
    everywhere, gives the backbone the same output and input gradient. In float64: the encoder's input
    gradient is ill-conditioned enough that fp32 rounding alone moves it by a few % with either kernel."""
    from .test_experts import SumFuser, randomise_experts, stage2

    backbone = (stage2(SumFuser, 160) if experts else
                build_sam_backbone(SamBackboneConfig.model_validate({"variant": "tiny", "image_size": 160})))
    if experts:
        randomise_experts(backbone)
    backbone.double()
    images = torch.rand(2, 3, 160, 160, dtype=torch.float64)
    results = []
    for limit in (0, 10**6):
        monkeypatch.setattr(rel_pos_attention, "CPU_EXPLICIT_MAX_TOKENS", dict.fromkeys(CPU_KEYS, limit))
        x = images.clone().requires_grad_()
        out = backbone(x)
        results.append((out, *torch.autograd.grad(out.square().sum(), x)))
    for fused, explicit in zip(*results):
        assert (fused - explicit).abs().max() <= 1e-9 * explicit.abs().max()
