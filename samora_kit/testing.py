"""The conformance suite: every registered component built from its `example` config and run against
its kind's contract (samora_kit.interfaces) with real tensors, forward and backward.

A plugin's test file needs one line; pytest then runs one test per component the plugin registers:

    from samora_kit.testing import conformance_tests
    test_conformance = conformance_tests("my_plugin")   # its entry-point name, as in [plugins] require

`conformance_tests` takes entry-point names, distribution names ("samora-kit": every built-in) or plugin
modules/objects not installed at all (registered in process, as `load_plugins(extra=...)` does); with
no argument, every installed plugin. `check_component(spec)` is the same check without pytest: it
raises ConformanceError naming the kind, the name, the plugin and what broke.

What each kind must do (a tiny context stands in for the core's):
- every kind: its `example` validates against its config model and its factory has the kind's signature; a
  config with a capability the core reads (interfaces: ChainsExpertPacks, ContinualPretrainingConfig,
  ValidationCases, IntensitySettings, SliceAxis) holds it with its types;
- backbone: B,3,S,S in [0, 1] -> B,C,g,g (g = S / embed_stride) or a FeaturePyramid; gradients reach every
  trainable parameter and `trainable_state_dict` holds them all; a PretrainableBackbone's tokens and
  block outputs have the widths it declares; an ExpertPackSource writes a pack;
- decoder (num_classes = 2, on the first backbone it accepts of each embedding stride, 16 and 4 among the
  built-ins): eval logits B,3,4g,4g (or S,S), and the
  training objective the core would use (its own DecoderObjective, else Dice + CE) gives a finite loss
  whose gradient reaches every trainable parameter of the decoder;
- pretext (on the first backbone it accepts of each stride, without a teacher unless it refuses one): a dict with a
  finite scalar `loss` whose gradient reaches the backbone's trainable parameters (the LoRA an expert pack
  saves) and every trainable parameter of the task;
- teacher: frozen and in eval mode once built, images -> a finite tensor; a ContinualPretraining teacher
  trains, saves, reloads and is frozen again;
- fuser (dim 96, 3 heads, experts pixel/patch/image: the tiny SAM's blocks): K,N,L,C deltas -> N,L,C,
  `valid` accepted and padded tokens never reach real ones, the gradient of the output reaches every
  trainable parameter (after fold_projection too); or, a LoraMerger, K mixing weights that every
  trainable parameter moves.
"Reaches every trainable parameter": each gets a finite gradient, some non-zero as built, and each a non-zero
one once every all-zero parameter is moved off zero (a gate or LoRA B that starts at zero blocks what lies
behind it at init, by design; a parameter that is unused, detached or multiplied by zero fails);
- dataset: `cases("train")` ids load as Volumes with images in [0, 1] and labels in 0..num_classes,
  `class_names` matches `num_classes`, an UnlabelledSource gives 3,S,S slices in an EpochAware Dataset.
  An example whose data is not on disk is skipped, naming the missing path;
- importer, converter: factory signature and example only (they need a real checkpoint or download).
A component that needs an optional library that is not installed is skipped, naming the library.
"""

from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from .errors import SamoraError
from .data.intensity import IntensityConfig
from .data.selection import CaseSelection
from .interfaces import (Backbone, ChainsExpertPacks, ContinualPretraining, ContinualPretrainingConfig, DatasetAdapter,
                         Decoder, DecoderObjective, EpochAware, ExpertPacks, ExpertPackSource, FeaturePyramid,
                         IntensitySettings, LoraMerger, PretrainableBackbone, PretextTask, SliceAxis, Teacher,
                         UnlabelledSource, ValidationCases, embedding_of)
from .plugins import DISABLE_AUTOLOAD, LoadedPlugins, default_plugins, load_plugins
from .registry import ComponentSpec, Registry, check_factory
from .train.losses import DiceCELoss
from .train.model import SegmentationModel, SegmentationObjective
from .weights.io import save_weights

BATCH = 2
NUM_CLASSES = 2  # foreground classes a decoder is built for
FUSER_CONTEXT = {"dim": 96, "num_heads": 3, "expert_names": ["pixel", "patch", "image"]}  # the tiny SAM
TEACHER_IMAGE_SIZE = 64  # when the teacher's config has no image_size
MISSING_LIBRARY = re.compile(r"needs the (\S+) package, which is not installed")  # samora_kit.extras

BackboneChoice = str | Callable[[], Backbone] | None


class ConformanceError(AssertionError):
    """A component does not meet its kind's contract; the message names kind, name, plugin and what broke."""


class ConformanceSkip(Exception):
    """The component cannot be exercised here (its example's data is absent, an optional library is missing)."""


# --- selection ----------------------------------------------------------------------------------------------


def conformance_tests(*plugins: str | object, backbone: BackboneChoice = None):
    """A pytest test function, parametrised over the components the named plugins register (ids "kind-name").

    plugins: entry-point names ("region"), distribution names ("samora-kit") or plugin modules/objects
    (registered in process); none: every installed plugin. backbone: what pretext tasks and decoders
    run on, a registered backbone's name (built from its example) or a zero-argument callable returning
    one; None: the first registered backbone each component accepts."""
    import pytest

    loaded, specs = select_specs(*plugins)

    @pytest.mark.parametrize("spec", specs, ids=[f"{s.kind}-{s.name}" for s in specs])
    def test_conformance(spec: ComponentSpec) -> None:
        try:
            check_component(spec, loaded.registry, backbone)
        except ConformanceSkip as skip:
            pytest.skip(str(skip))

    return test_conformance


def select_specs(*plugins: str | object) -> tuple[LoadedPlugins, list[ComponentSpec]]:
    """(the loaded plugins, the specs the named plugins registered); raise SamoraError for an unknown
    name or a plugin that failed to load."""
    objects = [p for p in plugins if not isinstance(p, str)]
    loaded = load_plugins(extra=objects) if objects else default_plugins()
    if not plugins:
        return loaded, loaded.registry.specs()
    failed = {f.name: f for f in loaded.failures}
    chosen: list[str] = []
    for plugin in plugins:
        if isinstance(plugin, str):
            chosen += _plugin_names(plugin, loaded, failed)
        else:
            name = loaded.manager.get_name(plugin)
            if name is None or name not in loaded.sources:
                label = getattr(plugin, "__name__", type(plugin).__name__)
                reason = failed[label].error if label in failed else "it was not registered"
                raise SamoraError(f"plugin {label} failed to load: {reason}")
            chosen.append(name)
    sources = {f"{name} ({loaded.sources[name]})" for name in chosen}
    specs = [s for s in loaded.registry.specs() if s.source in sources]
    if not specs:
        raise SamoraError(f"plugin(s) {', '.join(sorted(chosen))} registered no components")
    return loaded, specs


def _plugin_names(wanted: str, loaded: LoadedPlugins, failed: dict) -> list[str]:
    """The plugins an entry-point name or a distribution name stands for."""
    if wanted in loaded.sources:
        return [wanted]
    if wanted in failed:
        raise SamoraError(f"plugin {wanted!r} ({failed[wanted].distribution}) failed to load: {failed[wanted].error}")
    by_dist = [name for name, dist in loaded.sources.items()
               if _canonical(dist.rsplit(" ", 1)[0]) == _canonical(wanted)]
    if by_dist:
        return by_dist
    off = f" ({DISABLE_AUTOLOAD} is set: installed plugins are not loaded)" if autoload_disabled() else ""
    raise SamoraError(f"no installed plugin or distribution named {wanted!r}{off}; installed plugins: "
                      f"{', '.join(f'{n} ({d})' for n, d in sorted(loaded.sources.items())) or 'none'}")


def autoload_disabled() -> bool:
    return os.environ.get(DISABLE_AUTOLOAD, "") not in ("", "0")


def _canonical(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


# --- the checks -------------------------------------------------------------------------------------------


def check_component(spec: ComponentSpec, registry: Registry | None = None, backbone: BackboneChoice = None) -> None:
    """Build `spec` from its example and check it against its kind's contract; raise ConformanceError
    (or ConformanceSkip when it cannot run here). `registry` supplies the backbones pretext tasks and
    decoders run on (default: the installed plugins')."""
    registry = registry or default_plugins().registry
    check = Check(spec, registry, _backbone_candidates(registry, backbone))
    with check.doing("validating the example config"):
        try:
            config = spec.config_model.model_validate(spec.example)
        except ValidationError as exc:
            check.fail(f"example {spec.example!r} does not validate against {spec.config_model.__name__}: "
                       + "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors()))
        check_factory(spec.kind, spec.name, spec.factory)
    check_config_capabilities(check, spec.kind, config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        KIND_CHECKS[spec.kind](check, config)


def check_config_capabilities(check: "Check", kind: str, config: BaseModel) -> None:
    """A config that has one of the capabilities the core reads (samora_kit.interfaces: ChainsExpertPacks,
    ContinualPretrainingConfig, ValidationCases, IntensitySettings, SliceAxis) holds them with their types."""
    if kind == "backbone" and isinstance(config, ChainsExpertPacks) and config.experts is not None:
        experts = config.experts
        check.expect(isinstance(experts, ExpertPacks) and isinstance(experts.names, list)
                     and all(isinstance(n, str) for n in experts.names) and isinstance(experts.packs, dict),
                     f"its config's experts is {experts!r}; expected an ExpertPacks section (names: list[str], "
                     "packs: dict[str, Path], model_copy) or None")
    if kind == "teacher" and isinstance(config, ContinualPretrainingConfig):
        check.expect(isinstance(config.cpt, bool) and isinstance(config.cpt_epochs, int) and config.cpt_epochs >= 0,
                     f"its config has cpt = {config.cpt!r}, cpt_epochs = {config.cpt_epochs!r}; expected a bool "
                     "and a whole number of epochs (ContinualPretrainingConfig)")
    if kind != "dataset":
        return
    if isinstance(config, ValidationCases):
        check.expect(config.val is None or isinstance(config.val, CaseSelection),
                     f"its config's val is {config.val!r}; expected a CaseSelection or None (ValidationCases)")
        check.expect(isinstance(config.root, Path), f"its config's root is {config.root!r}; expected a Path "
                                                    "(ValidationCases resolves val against it)")
    if isinstance(config, IntensitySettings):
        check.expect(isinstance(config.intensity, IntensityConfig),
                     f"its config's intensity is {config.intensity!r}; expected an IntensityConfig (IntensitySettings)")
    if isinstance(config, SliceAxis):
        check.expect(config.slice_axis in (0, 1, 2) and isinstance(config.slice_axis, int),
                     f"its config's slice_axis is {config.slice_axis!r}; expected 0, 1 or 2 (SliceAxis)")


class Check:
    """One component under test: failure messages that name it, its exceptions turned into what it was
    doing, and the registry and candidate backbones it runs with."""

    def __init__(self, spec: ComponentSpec, registry: Registry, backbones: list[tuple[str, Callable[[], Any]]]):
        self.spec, self.registry, self.backbones = spec, registry, backbones
        self.label = f"{spec.kind} {spec.name!r} (from {spec.source})"

    def fail(self, problem: str):
        raise ConformanceError(f"{self.label}: {problem}")

    def expect(self, ok: bool, problem: str) -> None:
        if not ok:
            self.fail(problem)

    @contextmanager
    def doing(self, what: str) -> Iterator[None]:
        try:
            yield
        except (ConformanceError, ConformanceSkip):
            raise
        except SamoraError as exc:
            library = MISSING_LIBRARY.search(str(exc))
            if library:
                raise ConformanceSkip(f"{self.label}: needs the {library.group(1)} package, which is not "
                                      f"installed ({exc})") from exc
            self.fail(f"{what} raised {type(exc).__name__}: {exc}")
        except Exception as exc:
            self.fail(f"{what} raised {type(exc).__name__}: {exc}")

    def build(self, config: BaseModel, **context):
        with self.doing("the factory"):
            return self.spec.build(config, **context)


def _backbone_candidates(registry: Registry, choice: BackboneChoice) -> list[tuple[str, Callable[[], Any]]]:
    """(label, zero-argument builder) of each backbone a pretext task or decoder may run on, in order."""
    if callable(choice):
        return [(getattr(choice, "__name__", "the given backbone"), choice)]
    specs = [registry.get("backbone", choice)] if choice else registry.specs("backbone")
    return [(f"backbone {s.name!r}", lambda s=s: s.build(s.example)) for s in specs]


def _accepted_per_stride(check: Check, build: Callable[[Any], Any]) -> list[tuple[Any, Any, str]]:
    """(backbone, component, backbone label) for the first candidate backbone the component's factory accepts
    of each embedding stride (SAM's 16, LiteMedSAM's 4, ...); a SamoraError from the factory means "not this
    backbone"."""
    refusals, accepted, strides = [], [], set()
    for label, make in check.backbones:
        try:
            backbone = make()
        except SamoraError as exc:  # e.g. its optional library is missing
            refusals.append(f"{label} could not be built: {exc}")
            continue
        stride = getattr(backbone, "embed_stride", None)
        if stride in strides:
            continue
        try:
            accepted.append((backbone, build(backbone), f"{label} (stride {stride})"))
            strides.add(stride)
        except SamoraError as exc:
            refusals.append(f"{label}: {exc}")
        except Exception as exc:
            check.fail(f"the factory raised {type(exc).__name__} on {label}: {exc}")
    if not accepted:
        check.fail("no registered backbone was accepted: " + ("; ".join(refusals) or "none is registered"))
    return accepted


def _images(size: int, batch: int = BATCH) -> torch.Tensor:
    return torch.rand(batch, 3, size, size)


def _trainable(module: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def _reached(params: dict[str, nn.Parameter]) -> list[str]:
    """Names of the parameters that received a finite, non-zero gradient."""
    return [n for n, p in params.items()
            if p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0]


def _shape(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def check_backbone(check: Check, config: BaseModel) -> None:
    backbone = check.build(config)
    missing = [m for m in ("image_size", "embed_channels", "embed_grid", "embed_stride", "checkpoint_path",
                           "trainable_state_dict") if not hasattr(backbone, m)]
    check.expect(isinstance(backbone, Backbone), f"lacks {', '.join(missing) or '__call__'} "
                                                 "(samora_kit.interfaces.Backbone)")
    size, c, g, stride = backbone.image_size, backbone.embed_channels, backbone.embed_grid, backbone.embed_stride
    check.expect(g * stride == size, f"embed_grid {g} x embed_stride {stride} is not the image size {size}")
    images = _images(size)
    with check.doing(f"forward on images {tuple(images.shape)}"):
        out = backbone(images)
    check.expect(isinstance(out, (torch.Tensor, FeaturePyramid)),
                 f"forward returned a {type(out).__name__}; expected a tensor or a FeaturePyramid")
    embedding = embedding_of(out)
    check.expect(_shape(embedding) == str((BATCH, c, g, g)),
                 f"output {_shape(embedding)}; expected B,C,g,g = {(BATCH, c, g, g)} (embed_channels {c}, grid {g})")
    levels = list(out.high_res) if isinstance(out, FeaturePyramid) else []
    for i, level in enumerate(levels):
        check.expect(isinstance(level, torch.Tensor) and level.dim() == 4 and level.shape[0] == BATCH
                     and level.shape[-1] == level.shape[-2] > g,
                     f"FeaturePyramid.high_res[{i}] is {_shape(level)}; expected B,C',h,h with h > {g}")
    sides = [level.shape[-1] for level in levels]
    check.expect(sides == sorted(sides, reverse=True), f"FeaturePyramid.high_res sides {sides}: finest first")
    params = _trainable(backbone)
    with check.doing("backward from the output"):
        sum((t.float() * torch.randn_like(t.float())).sum() for t in [embedding, *levels]).backward()
    unreached = sorted(set(params) - {n for n, p in params.items() if p.grad is not None})
    check.expect(not unreached, f"no gradient reaches trainable parameter(s) {unreached[:4]}")
    with check.doing("trainable_state_dict()"):
        state = backbone.trainable_state_dict()
    check.expect(isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()),
                 "trainable_state_dict() must return a dict of tensors")
    lost = sorted(set(params) - set(state))
    check.expect(not lost, f"trainable_state_dict() misses trainable parameter(s) {lost[:4]}: a checkpoint "
                           "would not hold them")
    if isinstance(backbone, PretrainableBackbone):
        _check_pretrainable(check, backbone, images)
    if isinstance(backbone, ExpertPackSource):
        with tempfile.TemporaryDirectory() as tmp, check.doing("write_expert_pack()"):
            path = backbone.write_expert_pack(Path(tmp) / "expert.safetensors", "conformance", provenance={
                "pretext": "conformance", "teacher": None, "teacher_cpt": False, "data_fingerprint": "none"},
                extra_header={})
            check.expect(Path(path).is_file(), f"write_expert_pack() returned {path}, which is not a file")


def _check_pretrainable(check: Check, backbone, images: torch.Tensor) -> None:
    g, width, widths = backbone.embed_grid, backbone.token_channels, list(backbone.block_channels)
    with torch.no_grad(), check.doing("tokens()"):
        tokens = backbone.tokens(images)
    check.expect(_shape(tokens) == str((BATCH, g, g, width)),
                 f"tokens() gave {_shape(tokens)}; expected B,g,g,token_channels = {(BATCH, g, g, width)}")
    check.expect(len(widths) > 0, "block_channels is empty")
    blocks = sorted({0, len(widths) - 1})
    with torch.no_grad(), check.doing(f"block_outputs(images, {blocks})"):
        out, taps = backbone.block_outputs(images, blocks)
    check.expect(_shape(embedding_of(out)) == _shape(embedding_of(backbone(images))),
                 "block_outputs()'s first item is not the backbone output")
    check.expect(len(taps) == len(blocks), f"block_outputs() gave {len(taps)} block outputs for blocks {blocks}")
    for block, tap in zip(blocks, taps):
        check.expect(isinstance(tap, torch.Tensor) and tap.dim() == 4 and tap.shape[0] == BATCH
                     and tap.shape[-1] == widths[block],
                     f"block {block}'s output is {_shape(tap)}; expected channels-last B,h,w,{widths[block]}")
    skips = backbone.default_skip_blocks()
    check.expect(all(0 <= b < len(widths) for b in skips), f"default_skip_blocks() {skips} out of 0..{len(widths) - 1}")


def check_decoder(check: Check, config: BaseModel) -> None:
    for backbone, decoder, where in _accepted_per_stride(
            check, lambda b: check.spec.build(config, backbone=b, num_classes=NUM_CLASSES)):
        _check_decoder_on(check, backbone, decoder, where)


def _check_decoder_on(check: Check, backbone, decoder, where: str) -> None:
    check.expect(isinstance(decoder, Decoder) and decoder.num_classes == NUM_CLASSES,
                 f"num_classes is {getattr(decoder, 'num_classes', 'missing')}; expected the {NUM_CLASSES} it was "
                 "built for (samora_kit.interfaces.Decoder)")
    g, size = backbone.embed_grid, backbone.image_size
    images = _images(size)
    with torch.no_grad():
        features = backbone(images)
    if isinstance(decoder, nn.Module):
        decoder.eval()
    with torch.no_grad(), check.doing(f"eval-mode forward on {where}'s output"):
        logits = decoder(features)
    expected = (BATCH, NUM_CLASSES + 1, 4 * g, 4 * g)
    check.expect(isinstance(logits, torch.Tensor) and tuple(logits.shape) in (expected, expected[:2] + (size, size)),
                 f"eval-mode logits {_shape(logits)} on {where}; expected B,num_classes+1,4g,4g = {expected} "
                 f"(g = {g}), or at the image size {size}")
    check.expect(bool(torch.isfinite(logits).all()), "eval-mode logits are not finite")
    model = SegmentationModel(backbone, decoder).train()
    if isinstance(decoder, DecoderObjective):
        with check.doing("objective()"):
            objective = decoder.objective(model, 0.2, 0.8)
    else:
        objective = SegmentationObjective(model, DiceCELoss(NUM_CLASSES))
    labels = torch.randint(0, NUM_CLASSES + 1, (BATCH, size, size))
    _check_loss_reaches(check, lambda: objective(images, labels), f"the training objective on {where}",
                        _trainable(decoder), "the decoder")


def _check_loss_reaches(check: Check, run: Callable[[], Any], what: str, params: dict[str, nn.Parameter],
                        whose: str, every: bool = True) -> None:
    """`run()` gives a dict with a finite scalar `loss` whose gradient reaches some of `params` as built and,
    with `every`, each of them (`_check_every_parameter_learns`)."""

    def loss() -> torch.Tensor:
        with check.doing(what):
            out = run()
        return _loss_of(check, out, what)

    _backward(check, loss(), f"the loss of {what}")
    check.expect(bool(_reached(params)), f"the loss's gradient reaches none of the {len(params)} trainable "
                                         f"parameter(s) of {whose}")
    if every:
        _check_every_parameter_learns(check, loss, params, whose)


def _backward(check: Check, loss: torch.Tensor, what: str) -> None:
    with check.doing(f"backward from {what}"):
        loss.backward()


def _check_every_parameter_learns(check: Check, loss: Callable[[], torch.Tensor], params: dict[str, nn.Parameter],
                                  whose: str) -> None:
    """After one backward from `loss()`: every parameter in `params` has a finite gradient, and a non-zero
    one once every all-zero parameter is moved off zero (a zero gate or LoRA B blocks the gradient of what
    lies behind it at init, by design; a parameter the loss does not depend on gets none anywhere)."""
    unused = [n for n, p in params.items() if p.grad is None]
    check.expect(not unused, f"no gradient reaches trainable parameter(s) {_names(unused)} of {whose}: they would "
                             "never learn (unused, or detached from the loss); use them or set requires_grad = False")
    broken = [n for n, p in params.items() if not torch.isfinite(p.grad).all()]
    check.expect(not broken, f"the gradient of trainable parameter(s) {_names(broken)} of {whose} is not finite")
    with torch.no_grad():
        for p in params.values():
            p.grad = None
            if not p.any():
                p.normal_(std=0.02)
    _backward(check, loss(), "the loss, with the zero-initialised parameters moved off zero")
    stuck = [n for n, p in params.items() if p.grad is None or not p.grad.any()]
    check.expect(not stuck, f"trainable parameter(s) {_names(stuck)} of {whose} get a zero gradient, even with every "
                            "zero-initialised parameter moved off zero: the loss does not depend on them")


def _names(names: list[str]) -> str:
    return f"{names[:4]}" + (f" (and {len(names) - 4} more)" if len(names) > 4 else "")


def _loss_of(check: Check, out, what: str) -> torch.Tensor:
    check.expect(isinstance(out, dict) and "loss" in out, f"{what} returned {type(out).__name__}"
                 f"{' with keys ' + str(sorted(out)) if isinstance(out, dict) else ''}; expected a dict with 'loss'")
    loss = out["loss"]
    check.expect(isinstance(loss, torch.Tensor) and loss.dim() == 0,
                 f"{what}'s 'loss' is {_shape(loss)}; expected a scalar tensor")
    check.expect(bool(torch.isfinite(loss)), f"{what}'s loss is {loss.item()}")
    check.expect(loss.requires_grad, f"{what}'s loss has no gradient (computed without autograd?)")
    others = [k for k, v in out.items() if not isinstance(v, torch.Tensor) or v.dim() != 0]
    check.expect(not others, f"{what}: {others} are not scalar tensors (every value is logged)")
    return loss


def check_pretext(check: Check, config: BaseModel) -> None:
    def build(backbone):
        try:
            return check.spec.build(config, backbone=backbone, teacher=None)
        except SamoraError as no_teacher:  # maybe it needs one: try each registered teacher's example
            for spec in check.registry.specs("teacher"):
                try:
                    return check.spec.build(config, backbone=backbone, teacher=spec.build(spec.example))
                except SamoraError:
                    continue
            raise no_teacher

    for backbone, task, where in _accepted_per_stride(check, build):
        _check_pretext_on(check, backbone, task, where)


def _check_pretext_on(check: Check, backbone, task, where: str) -> None:
    check.expect(isinstance(task, PretextTask), f"built a {type(task).__name__}, which is not callable")
    if isinstance(task, nn.Module):
        task.train()
    images = _images(backbone.image_size)
    _check_loss_reaches(check, lambda: task(images), f"forward on {where} with images B,3,S,S in [0, 1]",
                        _trainable(backbone), f"{where}: the expert it trains would be saved unchanged", every=False)
    params = {**{f"backbone.{n}": p for n, p in _trainable(backbone).items()},  # the task may hold it elsewhere
              **(_trainable(task) if isinstance(task, nn.Module) else {})}
    _check_loss_reaches(check, lambda: task(images), f"forward on {where} with images B,3,S,S in [0, 1]",
                        _deduplicated(params), "the task (its heads and the backbone's trainable parameters)")
    teacher = getattr(task, "teacher", None)
    if isinstance(teacher, nn.Module):
        _check_frozen(check, teacher, "its teacher, after task.train(),")


def _deduplicated(params: dict[str, nn.Parameter]) -> dict[str, nn.Parameter]:
    """Each parameter once, under its last name."""
    return {n: p for p, n in {p: n for n, p in params.items()}.items()}


def _check_frozen(check: Check, module: nn.Module, what: str) -> None:
    training = [n or "<root>" for n, m in module.named_modules() if m.training]
    check.expect(not training, f"{what} has module(s) in training mode: {training[:4]}; a teacher stays in eval mode")
    trainable = list(_trainable(module))
    check.expect(not trainable, f"{what} has trainable parameter(s) {trainable[:4]}; a teacher is frozen")


def check_teacher(check: Check, config: BaseModel) -> None:
    teacher = check.build(config)
    check.expect(isinstance(teacher, Teacher), f"built a {type(teacher).__name__}, which is not callable")
    if isinstance(teacher, nn.Module):
        _check_frozen(check, teacher, "once built, it")
    images = _images(getattr(config, "image_size", TEACHER_IMAGE_SIZE))
    with torch.no_grad(), check.doing(f"forward on images {tuple(images.shape)}"):
        features = teacher(images)
    check.expect(isinstance(features, torch.Tensor) and features.dim() >= 2 and features.shape[0] == BATCH,
                 f"forward returned {_shape(features)}; expected a tensor with batch size {BATCH} first")
    check.expect(bool(torch.isfinite(features).all()), "its features are not finite")
    if not isinstance(teacher, ContinualPretraining):
        return
    with check.doing("cpt_objective()"):
        objective = teacher.cpt_objective()
    _check_loss_reaches(check, lambda: objective(images), "cpt_objective()(images)", _trainable(objective),
                        "the continual pre-training objective", every=False)
    with check.doing("cpt_tensors(), then load_cpt()"):
        tensors = teacher.cpt_tensors()
        check.expect(isinstance(tensors, dict) and all(isinstance(v, torch.Tensor) for v in tensors.values()),
                     "cpt_tensors() must return a dict of tensors")
        with tempfile.TemporaryDirectory() as tmp:
            teacher.load_cpt(save_weights(Path(tmp) / "cpt.safetensors", tensors, {"kind": "teacher"}))
    if isinstance(teacher, nn.Module):
        _check_frozen(check, teacher, "after load_cpt(), it")


def check_fuser(check: Check, config: BaseModel) -> None:
    fuser = check.build(config, **FUSER_CONTEXT)
    k, dim = len(FUSER_CONTEXT["expert_names"]), FUSER_CONTEXT["dim"]
    if isinstance(fuser, LoraMerger):
        with check.doing("mixing_weights()"):
            weights = fuser.mixing_weights()
        check.expect(_shape(weights) == str((k,)) and weights.requires_grad,
                     f"mixing_weights() gave {_shape(weights)}; expected {k} trainable weights")
        params = _trainable(fuser) if isinstance(fuser, nn.Module) else {}
        if params:
            scale = torch.randn(k)
            _backward(check, (weights * scale).sum(), "the mixing weights")
            _check_every_parameter_learns(check, lambda: (fuser.mixing_weights() * scale).sum(), params, "the fuser")
        return
    deltas = torch.randn(k, BATCH, 6, dim)  # K, N, L, C
    valid = torch.ones(BATCH, 6, dtype=torch.bool)
    valid[1, -2:] = False  # the last group's last two tokens are window padding
    if isinstance(fuser, nn.Module):
        fuser.eval()
    with torch.no_grad(), check.doing(f"forward(deltas {tuple(deltas.shape)}, valid={tuple(valid.shape)})"):
        fused = fuser(deltas, valid=valid)
        plain = fuser(deltas)
        repadded = deltas.clone()
        repadded[:, ~valid] = torch.randn_like(repadded[:, ~valid])
        fused_again = fuser(repadded, valid=valid)
    for what, out in (("with valid", fused), ("without valid", plain)):
        check.expect(_shape(out) == str((BATCH, 6, dim)),
                     f"forward {what} gave {_shape(out)} for deltas K,N,L,C = {tuple(deltas.shape)}; "
                     f"expected N,L,C = {(BATCH, 6, dim)}")
        check.expect(bool(torch.isfinite(out).all()), f"forward {what} gave non-finite values")
    check.expect(torch.allclose(fused[valid], fused_again[valid], atol=1e-5),
                 "padded tokens (valid = False) change the fused output of real tokens")
    if isinstance(fuser, nn.Module):
        fuser.train()
    _check_fuser_learns(check, fuser, deltas, valid, "")
    if callable(getattr(fuser, "fold_projection", None)):
        check.expect(isinstance(getattr(fuser, "output_before_projection", None), bool),
                     "has fold_projection() but no boolean attribute output_before_projection")
        folded = check.build(config, **FUSER_CONTEXT)
        with torch.no_grad(), check.doing("fold_projection(weight C,C), then forward"):
            folded.fold_projection(torch.randn(dim, dim) / dim ** 0.5)
            out = folded(deltas, valid=valid)
        check.expect(_shape(out) == str((BATCH, 6, dim)), f"after fold_projection, forward gave {_shape(out)}")
        _check_fuser_learns(check, folded, deltas, valid, " after fold_projection")


def _check_fuser_learns(check: Check, fuser, deltas: torch.Tensor, valid: torch.Tensor, when: str) -> None:
    """In training mode, the gradient of a loss on the fused output reaches the fuser's parameters as built,
    and every one of them (`_check_every_parameter_learns`)."""
    params = _trainable(fuser) if isinstance(fuser, nn.Module) else {}
    if not params:
        return
    fuser.train()
    weights = torch.randn(BATCH, deltas.shape[2], deltas.shape[3])  # N, L, C

    def loss() -> torch.Tensor:
        with check.doing(f"forward in training mode{when}"):
            return (fuser(deltas, valid=valid) * weights).sum()

    _backward(check, loss(), f"the fused output{when}")
    check.expect(bool(_reached(params)), f"no gradient reaches its {len(params)} trainable parameter(s){when}")
    _check_every_parameter_learns(check, loss, params, f"the fuser{when}")


def check_dataset(check: Check, config: BaseModel) -> None:
    absent = [f"{key} = {str(value)!r}" for key, value in config if isinstance(value, Path) and not value.exists()]
    if absent:
        raise ConformanceSkip(f"{check.label}: its example's data is not here ({', '.join(absent)}, relative to "
                              f"{Path.cwd()})")
    adapter = check.build(config)
    check.expect(isinstance(adapter, DatasetAdapter), f"built a {type(adapter).__name__}, which lacks "
                                                      "num_classes, class_names, cases or load_case")
    n, names = adapter.num_classes, adapter.class_names
    check.expect(isinstance(n, int) and n >= 0 and len(names) == n and all(isinstance(x, str) for x in names),
                 f"class_names {names!r} do not name its num_classes = {n} foreground classes")
    with check.doing("cases('train') and cases('test')"):
        train, test = adapter.cases("train"), adapter.cases("test")
    check.expect(isinstance(train, list) and len(train) > 0 and all(isinstance(c, str) for c in train),
                 f"cases('train') gave {train!r}; expected a non-empty list of case ids")
    check.expect(isinstance(test, list) and all(isinstance(c, str) for c in test),
                 f"cases('test') gave {test!r}; expected a list of case ids")
    with check.doing(f"load_case({train[0]!r})"):
        volume = adapter.load_case(train[0])
    image = getattr(volume, "image", None)
    check.expect(image is not None and image.ndim == 3, f"load_case({train[0]!r}) gave no Z,H,W image")
    check.expect(float(image.min()) >= 0.0 and float(image.max()) <= 1.0,
                 f"case {train[0]!r}: image values in [{image.min():.3g}, {image.max():.3g}]; expected [0, 1]")
    if volume.label is not None:
        low, high = int(volume.label.min()), int(volume.label.max())
        check.expect(low >= 0 and high <= n, f"case {train[0]!r}: label values in [{low}, {high}]; expected 0..{n}")
    if isinstance(adapter, UnlabelledSource):
        with check.doing("slice_dataset(64)[0]"):
            slices = adapter.slice_dataset(64)
            item = slices[0]
        check.expect(isinstance(slices, EpochAware), "slice_dataset() has no set_epoch(epoch): the training loop "
                                                     "calls it at the start of every epoch")
        check.expect(_shape(item) == str((3, 64, 64)) and 0.0 <= float(item.min()) and float(item.max()) <= 1.0,
                     f"slice_dataset(64)[0] is {_shape(item)}; expected 3,64,64 in [0, 1]")


def check_tool(check: Check, config: BaseModel) -> None:
    raise ConformanceSkip(f"{check.label}: example and factory signature checked; running it needs a real "
                          f"{'checkpoint' if check.spec.kind == 'importer' else 'download'}")


KIND_CHECKS: dict[str, Callable[[Check, BaseModel], None]] = {
    "backbone": check_backbone, "decoder": check_decoder, "pretext": check_pretext, "teacher": check_teacher,
    "fuser": check_fuser, "dataset": check_dataset, "importer": check_tool, "converter": check_tool,
}
