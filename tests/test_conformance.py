"""Every built-in component against its kind's contract (samora_kit.testing), and proof that the suite fails
a component that breaks its contract, saying which one and how."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from samora_kit.errors import SamoraError
from samora_kit.hookspecs import hookimpl
from samora_kit.plugins import DISABLE_AUTOLOAD, load_plugins
from samora_kit.registry import ComponentConfig
from samora_kit.testing import ConformanceError, check_component, conformance_tests, select_specs
from samora_kit_plugins import sam as sam_plugin

test_conformance = conformance_tests("samora-kit")


# --- components that each break one rule --------------------------------------------------------------


class WrongShapeDecoder(nn.Module):
    """Logits on the embedding grid g instead of 4g."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.proj = nn.Conv2d(channels, num_classes + 1, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)  # B, K+1, g, g


class DetachedPretext(nn.Module):
    """A head trained on detached tokens: the backbone's LoRA never learns anything."""

    def __init__(self, backbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.token_channels, 1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        tokens = self.backbone.tokens(images).detach()
        return {"loss": self.head(tokens).pow(2).mean()}


class AwakeTeacher(nn.Module):
    """Trainable and in training mode: a teacher that would drift while it teaches."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.conv(images), 1).flatten(1)


class NoValidFuser(nn.Module):
    def forward(self, deltas: torch.Tensor) -> torch.Tensor:
        return deltas.sum(0)


def build_wrong_shape(config, *, backbone, num_classes):
    return WrongShapeDecoder(backbone.embed_channels, num_classes)


def build_detached(config, *, backbone, teacher=None):
    return DetachedPretext(backbone)


def build_awake(config):
    return AwakeTeacher()


def build_no_valid(config, *, dim, num_heads, expert_names):
    return NoValidFuser()


class StrictConfig(ComponentConfig):
    width: int = 8


def broken_plugin() -> types.ModuleType:
    plugin = types.ModuleType("broken_conformance_plugin")

    @hookimpl
    def samora_kit_register(registry):
        registry.add("decoder", "wrong_shape", ComponentConfig, build_wrong_shape)
        registry.add("pretext", "detached", ComponentConfig, build_detached)
        registry.add("teacher", "awake", ComponentConfig, build_awake)
        registry.add("fuser", "no_valid", ComponentConfig, build_no_valid)
        registry.add("fuser", "bad_example", StrictConfig, build_no_valid, example={"widht": 8})

    plugin.samora_kit_register = samora_kit_register
    return plugin


@pytest.fixture(scope="module")
def broken():
    plugin = broken_plugin()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DISABLE_AUTOLOAD, "1")
        loaded = load_plugins(extra=[sam_plugin, plugin])
    assert not loaded.failures
    return loaded.registry


@pytest.mark.parametrize("kind, name, problem", [
    ("decoder", "wrong_shape", "eval-mode logits (2, 3, 4, 4) on backbone 'sam' (stride 16); expected "
                               "B,num_classes+1,4g,4g = (2, 3, 16, 16)"),
    ("pretext", "detached", "the loss's gradient reaches none of the 16 trainable parameter(s) of backbone 'sam'"),
    ("teacher", "awake", "once built, it has module(s) in training mode: ['<root>', 'conv']"),
    ("fuser", "no_valid", "forward(deltas (3, 2, 6, 96), valid=(2, 6)) raised TypeError"),
    ("fuser", "bad_example", "example {'widht': 8} does not validate against StrictConfig: widht: Extra inputs"),
])
def test_a_component_that_breaks_its_contract_fails_naming_kind_name_and_problem(broken, kind, name, problem):
    with pytest.raises(ConformanceError) as failure:
        check_component(broken.get(kind, name), broken)
    message = str(failure.value)
    assert message.startswith(f"{kind} {name!r} (from broken_conformance_plugin (<registered in process>)): ")
    assert problem in message



class LooseCptConfig(ComponentConfig):  # the capability's names with the wrong types
    cpt: str = "yes"
    cpt_epochs: int = 1


class SidewaysConfig(ComponentConfig):
    slice_axis: int = 3


@pytest.mark.parametrize("kind, config, problem", [
    ("teacher", LooseCptConfig, "its config has cpt = 'yes', cpt_epochs = 1; expected a bool and a whole number "
                                "of epochs (ContinualPretrainingConfig)"),
    ("dataset", SidewaysConfig, "its config's slice_axis is 3; expected 0, 1 or 2 (SliceAxis)"),
])
def test_a_config_capability_with_the_wrong_types_fails_before_anything_is_built(monkeypatch, kind, config, problem):
    """The core reads teacher.cpt and data.slice_axis through the interfaces' config capabilities; a config
    that has their names must hold their types, or the core would misread it."""
    plugin = types.ModuleType("loose_capabilities")

    def never_built(config):
        raise AssertionError("the config is checked before the component is built")

    plugin.samora_kit_register = hookimpl(lambda registry: registry.add(kind, "loose", config, never_built))
    monkeypatch.setenv(DISABLE_AUTOLOAD, "1")
    loaded = load_plugins(extra=[plugin])
    with pytest.raises(ConformanceError, match="loose") as failure:
        check_component(loaded.registry.get(kind, "loose"), loaded.registry)
    assert problem in str(failure.value)

def test_the_suite_selects_only_the_named_plugins_components(monkeypatch):
    monkeypatch.setenv(DISABLE_AUTOLOAD, "1")
    plugin = broken_plugin()
    _, specs = select_specs(plugin)
    assert {(s.kind, s.name) for s in specs} == {("decoder", "wrong_shape"), ("pretext", "detached"),
                                                 ("teacher", "awake"), ("fuser", "no_valid"),
                                                 ("fuser", "bad_example")}
    test = conformance_tests(plugin)
    ids = [mark.kwargs.get("ids") or mark.args[2] for mark in test.pytestmark if mark.name == "parametrize"][0]
    assert sorted(ids) == ["decoder-wrong_shape", "fuser-bad_example", "fuser-no_valid", "pretext-detached",
                           "teacher-awake"]


def test_an_unknown_plugin_name_is_refused_listing_the_installed_ones():
    with pytest.raises(SamoraError, match=r"no installed plugin or distribution named 'regoin'; installed plugins: "
                                          r".*sam \(samora-kit"):
        select_specs("regoin")


# --- every trainable parameter must learn -------------------------------------------------------------


class SpareParameterFuser(nn.Module):
    """Sums the deltas with a learnt scale; `spare` is never used."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.spare = nn.Linear(dim, dim)

    def forward(self, deltas: torch.Tensor, valid=None) -> torch.Tensor:
        return deltas.sum(0) * self.scale


class DetachedBiasFuser(SpareParameterFuser):
    """Its bias is detached: the output moves with it, the loss's gradient never reaches it."""

    def forward(self, deltas: torch.Tensor, valid=None) -> torch.Tensor:
        return deltas.sum(0) * self.scale + self.spare.bias.detach()


class MultipliedByZeroFuser(SpareParameterFuser):
    """`spare` is in the graph, times a constant zero: a gradient of exactly zero wherever it stands."""

    def forward(self, deltas: torch.Tensor, valid=None) -> torch.Tensor:
        return deltas.sum(0) * self.scale + 0.0 * self.spare(deltas.mean(0))


class ZeroGatedFuser(SpareParameterFuser):
    """Sound: `spare` sits behind a gate that starts at zero (HL-Attn's kind), so it learns once the gate opens."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, deltas: torch.Tensor, valid=None) -> torch.Tensor:
        return deltas.sum(0) * self.scale + self.gate * self.spare(deltas.mean(0))


class SpareHeadPretext(DetachedPretext):
    """Trains the backbone's LoRA through `head`; `spare_head` never sees the loss."""

    def __init__(self, backbone) -> None:
        super().__init__(backbone)
        self.spare_head = nn.Linear(backbone.token_channels, 1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": self.head(self.backbone.tokens(images)).pow(2).mean()}


class SpareDecoder(WrongShapeDecoder):
    """Right shapes; `spare` is never used."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__(channels, num_classes)
        self.spare = nn.Conv2d(channels, channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.proj(features), scale_factor=4, mode="bilinear", align_corners=False)


def learning_plugin() -> types.ModuleType:
    plugin = types.ModuleType("learning_conformance_plugin")

    def fuser_factory(cls):
        return lambda config, *, dim, num_heads, expert_names: cls(dim)

    @hookimpl
    def samora_kit_register(registry):
        for name, cls in (("spare", SpareParameterFuser), ("detached_bias", DetachedBiasFuser),
                          ("times_zero", MultipliedByZeroFuser), ("zero_gated", ZeroGatedFuser)):
            registry.add("fuser", name, ComponentConfig, fuser_factory(cls))
        registry.add("pretext", "spare_head", ComponentConfig,
                     lambda config, *, backbone, teacher=None: SpareHeadPretext(backbone))
        registry.add("decoder", "spare", ComponentConfig,
                     lambda config, *, backbone, num_classes: SpareDecoder(backbone.embed_channels, num_classes))

    plugin.samora_kit_register = samora_kit_register
    return plugin


@pytest.fixture(scope="module")
def learning():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DISABLE_AUTOLOAD, "1")
        loaded = load_plugins(extra=[sam_plugin, learning_plugin()])
    assert not loaded.failures
    return loaded.registry


UNUSED = "they would never learn (unused, or detached from the loss); use them or set requires_grad = False"


@pytest.mark.parametrize("kind, name, problem", [
    ("fuser", "spare", f"no gradient reaches trainable parameter(s) ['spare.weight', 'spare.bias'] of the fuser: "
                       f"{UNUSED}"),
    ("fuser", "detached_bias", f"no gradient reaches trainable parameter(s) ['spare.weight', 'spare.bias'] of the "
                               f"fuser: {UNUSED}"),
    ("fuser", "times_zero", "trainable parameter(s) ['spare.weight', 'spare.bias'] of the fuser get a zero gradient, "
                            "even with every zero-initialised parameter moved off zero"),
    ("pretext", "spare_head", "no gradient reaches trainable parameter(s) ['spare_head.weight', 'spare_head.bias'] "
                              "of the task (its heads and the backbone's trainable parameters)"),
    ("decoder", "spare", f"no gradient reaches trainable parameter(s) ['spare.weight', 'spare.bias'] of the "
                         f"decoder: {UNUSED}"),
])
def test_a_trainable_parameter_that_never_learns_fails_naming_it(learning, kind, name, problem):
    with pytest.raises(ConformanceError) as failure:
        check_component(learning.get(kind, name), learning)
    assert str(failure.value).startswith(f"{kind} {name!r} (from learning_conformance_plugin (<registered in process>))")
    assert problem in str(failure.value)


def test_parameters_behind_a_gate_that_starts_at_zero_pass(learning):
    check_component(learning.get("fuser", "zero_gated"), learning)  # at init only the gate's gradient is non-zero
