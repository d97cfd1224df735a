"""Stage-2 fusers: the registry is the test matrix; HL-Attn's init, budget, order and windows."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from torch import nn

from samora_kit.errors import SamoraError
from samora_kit.interfaces import LoraMerger
from samora_kit.plugins import load_plugins
from samora_kit_plugins.fusion import HLAttn, HLAttnConfig, build_hl_attn, hl_attn_parameter_count
from samora_kit_plugins.fusion import hl_attn as hl_attn_module
from samora_kit_plugins.fusion.hl_attn import attend

NAMES = ["image", "patch", "pixel"]
DIM, HEADS = 96, 3
EXPECTED = {"hl_attn", "sum", "lac", "mole", "lorahub"}
REGISTRY = load_plugins().registry
FUSERS = REGISTRY.names("fuser")


def build(name: str, config: dict | None = None, dim: int = DIM, names=NAMES):
    spec = REGISTRY.get("fuser", name)
    return spec.build(spec.example if config is None else config, dim=dim, num_heads=HEADS,
                      expert_names=list(names))


def deltas(k: int = 3, n: int = 4, l: int = 9, c: int = DIM, seed: int = 0) -> torch.Tensor:
    return torch.randn(k, n, l, c, generator=torch.Generator().manual_seed(seed))


def hl_attn(order=None, dim: int = DIM, names=NAMES, **config) -> HLAttn:
    cfg = HLAttnConfig(**config) if order is None else HLAttnConfig(order=order, **config)
    return build_hl_attn(cfg, dim=dim, num_heads=HEADS, expert_names=list(names))


def wake_up(fuser: nn.Module) -> nn.Module:
    """Give zero-initialised gates random values (what training does)."""
    torch.manual_seed(1)
    with torch.no_grad():
        if isinstance(fuser, HLAttn):
            nn.init.normal_(fuser.gate, std=0.5)
        elif hasattr(fuser, "gate"):
            nn.init.normal_(fuser.gate.weight, std=0.5)
    return fuser


def test_registry_lists_every_fuser_with_a_valid_example():
    assert EXPECTED <= set(FUSERS)
    for name in FUSERS:
        spec = REGISTRY.get("fuser", name)
        spec.config_model.model_validate(spec.example)
        assert spec.summary


@pytest.mark.parametrize("name", FUSERS)
def test_every_fuser_builds_from_registry_and_backprops(name):
    fuser = build(name)
    assert isinstance(fuser, nn.Module)
    assert fuser.expert_names == NAMES
    if isinstance(fuser, LoraMerger):
        w = fuser.mixing_weights()
        assert w.shape == (3,) and torch.allclose(w, torch.full((3,), 1 / 3)) and w.requires_grad
        a, b = torch.randn(3, 4, DIM), torch.randn(3, DIM, 4)
        ma, mb = fuser.merge(a, b)
        assert ma.shape == (4, DIM) and mb.shape == (DIM, 4)
        assert torch.allclose(ma, a.mean(0), atol=1e-6) and torch.allclose(mb, b.mean(0), atol=1e-6)
        (mb @ ma).square().sum().backward()
        assert fuser.weights.grad is not None and fuser.weights.grad.abs().sum() > 0
        with pytest.raises(RuntimeError, match="lorahub.*mixing_weights"):
            fuser(deltas())
        return
    d = deltas().requires_grad_()
    out = fuser(d)
    assert out.shape == (4, 9, DIM) and out.dtype == d.dtype and torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    assert d.grad is not None
    for pname, p in fuser.named_parameters():
        assert p.grad is not None, f"{name}.{pname} got no gradient"
    if any(True for _ in fuser.parameters()):
        assert any(p.grad.abs().sum() > 0 for p in fuser.parameters())
    with pytest.raises(ValueError, match=r"expects stacked expert deltas"):
        fuser(deltas(k=2))
    with pytest.raises(ValueError, match=r"C=96"):
        fuser(deltas(c=DIM + 1))


@pytest.mark.parametrize("name", [n for n in FUSERS if n != "hl_attn"])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_baselines_accept_any_number_of_experts(name, k):
    names = [f"e{i}" for i in range(k)]
    fuser = build(name, names=names)
    if isinstance(fuser, LoraMerger):
        assert fuser.mixing_weights().shape == (k,)
        assert torch.allclose(fuser.mixing_weights().sum(), torch.tensor(1.0))
    else:
        assert fuser(deltas(k=k)).shape == (4, 9, DIM)


@pytest.mark.parametrize("name", [n for n in FUSERS if n != "hl_attn" and not isinstance(build(n), LoraMerger)])
def test_delta_baselines_start_as_the_plain_sum(name):
    fuser = build(name)
    d = deltas()
    assert torch.allclose(fuser(d), d.sum(0), atol=1e-5)


def test_sum_equals_deltas_sum():
    d = deltas()
    assert torch.equal(build("sum")(d), d.sum(0))


def test_lac_init_equals_sum_and_learns_one_scalar_per_expert():
    lac = build("lac")
    d = deltas()
    assert torch.allclose(lac(d), d.sum(0), atol=1e-6)
    assert [p.shape for p in lac.parameters()] == [(3,)]
    with torch.no_grad():
        lac.weights.copy_(torch.tensor([0.0, 2.0, 0.0]))
    assert torch.allclose(lac(d), 2 * d[1], atol=1e-6)


def test_mole_gate_is_per_token_and_sums_to_one():
    mole = wake_up(build("mole"))
    d = deltas()
    g = mole.gates(d)
    assert g.shape == (4, 9, 3) and torch.allclose(g.sum(-1), torch.ones(4, 9), atol=1e-6)
    assert g.flatten(0, 1).std(0).max() > 1e-3  # different tokens get different gates
    assert torch.allclose(mole(d), 3 * (g.movedim(-1, 0)[..., None] * d).sum(0), atol=1e-5)


def test_hl_attn_is_zero_at_init_and_its_gate_learns_first():
    fuser = build("hl_attn", {})
    d = deltas(l=16)
    out = fuser(d)
    assert out.shape == (4, 16, DIM) and torch.equal(out, torch.zeros_like(out))
    (out * torch.randn_like(out)).sum().backward()
    assert fuser.gate.grad.abs().sum() > 0  # the zero gate gets a gradient at once; nothing behind it yet
    assert all(p.grad.abs().sum() == 0 for n, p in fuser.named_parameters() if n != "gate")


def test_hl_attn_passes_the_experts_scale_through():
    """No norm before the fusion width: an expert ten times weaker contributes ten times less
    (with the biases at zero the fuser is then homogeneous: the LayerNorms only shape the attention)."""
    fuser = wake_up(hl_attn(width=32, heads=4))
    with torch.no_grad():
        for name, p in fuser.named_parameters():
            if name.endswith("bias") and "norm" not in name:
                p.zero_()
        d = deltas()
        assert torch.allclose(fuser(0.1 * d), 0.1 * fuser(d), rtol=1e-3, atol=1e-4)
        weak = d.clone()
        weak[NAMES.index("image")] *= 0.01
        assert not torch.allclose(fuser(weak), fuser(d), atol=1e-3)


@pytest.mark.parametrize("name", [n for n in FUSERS if not isinstance(build(n), LoraMerger)])
def test_folding_the_projection_keeps_every_fuser_exact(name):
    """D_i = W d_i for the frozen projection W: the folded fuser fed d equals the unfolded one fed
    W d (projected with W too when its output is still before the projection)."""
    fuser = wake_up(build(name))
    weight = torch.randn(DIM, DIM) / DIM**0.5
    folded = wake_up(build(name))
    folded.load_state_dict(fuser.state_dict())
    folded.fold_projection(weight)
    d = deltas()
    with torch.no_grad():
        unfolded_out = fuser(torch.einsum("oc,knlc->knlo", weight, d))
        folded_out = folded(d)
        if folded.output_before_projection:
            folded_out = folded_out @ weight.t()
    assert torch.allclose(folded_out, unfolded_out, atol=1e-5), (folded_out - unfolded_out).abs().max()
    with pytest.raises(SamoraError, match="already holds a folded projection") if name in ("hl_attn", "mole") \
            else nullcontext():
        folded.fold_projection(weight)


@pytest.fixture(params=["explicit", "fused"])
def kernel(request, monkeypatch):
    """Run HL-Attn's attention on the CPU's explicit softmax or on SDPA, whatever the rule would pick."""
    limit = 10**9 if request.param == "explicit" else -1
    monkeypatch.setattr(hl_attn_module, "CPU_EXPLICIT_MAX_TOKENS",
                        {(dtype, grad): limit for dtype in (torch.float32, torch.bfloat16) for grad in (False, True)})
    return request.param


def test_padded_window_tokens_never_reach_real_ones(kernel):
    fuser = wake_up(hl_attn(width=32, heads=4))
    d = deltas(n=3, l=16)
    valid = torch.ones(3, 16, dtype=torch.bool)
    valid[1:, 10:] = False  # windows 1 and 2 end in padding
    out = fuser(d, valid=valid)
    changed = d.clone()
    changed[:, ~valid] = 1e3 * torch.randn(3, int((~valid).sum()), DIM)
    again = fuser(changed, valid=valid)
    assert torch.equal(again[valid], out[valid])
    assert not torch.allclose(fuser(changed)[valid], out[valid])  # without the mask they would leak


def test_explicit_and_fused_attention_agree_with_their_gradients():
    """The kernel the CPU picks for the fuser's attention changes nothing but speed: the explicit softmax and
    SDPA give the same output and the same gradients, padded keys masked."""
    valid = torch.ones(3, 16, dtype=torch.bool)
    valid[1:, 10:] = False
    results = []
    for fused in (False, True):
        q, k, v = (torch.randn(3, 4, 16, 8, generator=torch.Generator().manual_seed(s), requires_grad=True)
                   for s in range(3))
        out = attend(q, k, v, valid[:, None, None, :], 0.0, fused=fused)
        out.square().sum().backward()
        results.append([out.detach(), q.grad, k.grad, v.grad])
    for explicit, fused in zip(*results):
        assert torch.allclose(explicit, fused, atol=1e-5), (explicit - fused).abs().max()
    q, k, v = (torch.randn(3, 4, 16, 8, generator=torch.Generator().manual_seed(s)) for s in range(3))
    with torch.autocast("cpu", torch.bfloat16):  # bf16 training on the CPU takes the explicit softmax
        low = attend(q.bfloat16().requires_grad_(True), k.bfloat16(), v.bfloat16(), valid[:, None, None, :], 0.0)
    assert torch.allclose(low.float(), results[1][0], atol=3e-2), (low.float() - results[1][0]).abs().max()


def test_hl_attn_parameter_count_matches_paper_budget():
    fuser = hl_attn(dim=768)
    count = sum(p.numel() for p in fuser.parameters() if p.requires_grad)
    assert count == hl_attn_parameter_count(768, 256, 3) == 791_808
    assert abs(count - 0.78e6) < 0.05e6
    assert abs(12 * count - 9.4e6) <= 1e6  # SAMora 118.5 M - SAMed 108.8 M - ~0.3 M expert LoRAs
    assert len(fuser.steps) == 2  # K - 1 cross-attention steps
    small = hl_attn(dim=DIM, width=32, heads=4)
    assert sum(p.numel() for p in small.parameters()) == hl_attn_parameter_count(DIM, 32, 3)


def test_hl_attn_order_is_validated_against_expert_names():
    with pytest.raises(SamoraError, match=r"'imag' is not an expert.*'image', 'patch', 'pixel'"):
        hl_attn(order=["pixel", "patch", "imag"])
    with pytest.raises(SamoraError, match=r"'patch' appears 2 times"):
        hl_attn(order=["pixel", "patch", "patch"])
    with pytest.raises(SamoraError, match=r"expert 'image' is missing from order"):
        hl_attn(order=["pixel", "patch"])
    with pytest.raises(SamoraError, match=r"'pixel' is not an expert"):  # default order, other names
        hl_attn(names=["a", "b", "c"])
    with pytest.raises(SamoraError, match=r"heads \(3\) must divide width \(32\)"):
        hl_attn(width=32, heads=3)
    assert hl_attn(order=["image", "pixel", "patch"]).order == ("image", "pixel", "patch")


def test_hl_attn_refuses_a_single_expert_and_fuses_two():
    with pytest.raises(SamoraError, match=r"at least 2 experts.*'sum' or 'lac'"):
        hl_attn(order=["pixel"], names=["pixel"])
    two = wake_up(hl_attn(order=["pixel", "patch"], names=["patch", "pixel"], width=32, heads=4))
    assert len(two.steps) == 1 and two(deltas(k=2)).shape == (4, 9, DIM)


def test_hl_attn_order_changes_result_after_training_step():
    torch.manual_seed(0)
    a = hl_attn(width=32, heads=4)
    opt = torch.optim.AdamW(a.parameters(), lr=1e-2)
    d, target = deltas(), torch.randn(4, 9, DIM)
    for _ in range(2):  # step 1 moves the gate, step 2 moves everything else
        opt.zero_grad()
        (a(d) - target).square().mean().backward()
        opt.step()
    assert a(d).abs().max() > 0
    b = hl_attn(order=["patch", "pixel", "image"], width=32, heads=4)
    b.load_state_dict(a.state_dict())
    same = hl_attn(width=32, heads=4)
    same.load_state_dict(a.state_dict())
    assert torch.equal(same(d), a(d))
    assert not torch.allclose(b(d), a(d), atol=1e-4)


def test_hl_attn_every_parameter_learns_once_the_output_moved():
    fuser = wake_up(hl_attn(width=32, heads=4))
    fuser(deltas()).square().sum().backward()
    dead = [n for n, p in fuser.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert dead == []


def test_hl_attn_tokens_attend_only_within_their_group():
    fuser = wake_up(hl_attn(width=32, heads=4)).eval()
    d = deltas(n=3, l=8)
    out = fuser(d)
    changed = d.clone()
    changed[:, 1] = torch.randn(3, 8, DIM)  # every expert's tokens of group 1
    out2 = fuser(changed)
    assert torch.allclose(out2[0], out[0], atol=1e-6) and torch.allclose(out2[2], out[2], atol=1e-6)
    assert not torch.allclose(out2[1], out[1], atol=1e-4)
    # within a group tokens do attend to each other: token 0 of the lowest level changes token 5
    poked = d.clone()
    poked[2, 0, 0] += 3 * torch.randn(DIM)  # "pixel" = order[0], group 0, token 0
    out3 = fuser(poked)
    assert not torch.allclose(out3[0, 5], out[0, 5], atol=1e-6)
    assert torch.allclose(out3[1:], out[1:], atol=1e-6)
    # batching groups equals running each group alone
    alone = torch.cat([fuser(d[:, i:i + 1]) for i in range(3)])
    assert torch.allclose(alone, out, atol=1e-5)


def test_hl_attn_dropout_only_in_training():
    fuser = wake_up(hl_attn(width=32, heads=4, dropout=0.5))
    d = deltas()
    fuser.eval()
    assert torch.equal(fuser(d), fuser(d))
    fuser.train()
    torch.manual_seed(0)
    first = fuser(d)
    assert not torch.allclose(first, fuser(d))
