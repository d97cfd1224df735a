"""kind -> name -> (pydantic config model, factory), filled by plugins."""

from __future__ import annotations

import difflib
import importlib.metadata as md
import inspect
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict

from .errors import DuplicateComponentError, PluginContractError, SamoraError
from .interfaces import FACTORY_CONTEXT

# model and data components recipes choose by name, then the tools behind `samora-kit weights import`
# (an official checkpoint format -> safetensors) and `samora-kit data convert` (a download -> a folder)
KINDS = ("backbone", "pretext", "teacher", "fuser", "decoder", "dataset", "importer", "converter")


class ComponentConfig(BaseModel):
    """Base of every component's config: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


@dataclass(frozen=True)
class ComponentSpec:
    kind: str
    name: str
    config_model: type[BaseModel]
    factory: Callable[..., Any]
    source: str  # the plugin and distribution that registered it ("region (samora-region 0.1.0)")
    summary: str = ""
    example: dict = field(default_factory=dict)  # a tiny config for conformance tests

    def build(self, config: BaseModel | dict | None = None, **context):
        if config is None or isinstance(config, dict):
            config = self.config_model.model_validate(config or {})
        return self.factory(config, **context)


class Registry:
    def __init__(self) -> None:
        self._specs: dict[str, dict[str, ComponentSpec]] = {k: {} for k in KINDS}
        self._source: str | None = None  # the plugin whose hook is running (load_plugins), else None

    def add(self, kind: str, name: str, config_model: type[BaseModel], factory: Callable[..., Any],
            *, summary: str = "", example: dict | None = None, source: str | None = None) -> ComponentSpec:
        """Register a component. Inside a plugin's `samora_kit_register` hook the plugin is credited with it;
        outside one, `source` if given, else the calling module's package and distribution."""
        source = self._source or source or caller_source(sys._getframe(1))
        if kind not in self._specs:
            raise SamoraError(f"unknown component kind {kind!r}; expected one of {', '.join(KINDS)}")
        if name in self._specs[kind]:
            other = self._specs[kind][name].source
            raise DuplicateComponentError(
                f"{kind} {name!r} is registered twice: by {other} and by {source}")
        check_factory(kind, name, factory)
        if not (isinstance(config_model, type) and issubclass(config_model, BaseModel)):
            raise PluginContractError(f"{kind} {name!r}: the config model must be a pydantic BaseModel "
                                      f"subclass (samora_kit.registry.ComponentConfig), got {config_model!r}")
        spec = ComponentSpec(kind, name, config_model, factory, source,
                             summary or (factory.__doc__ or "").strip().split("\n")[0], example or {})
        self._specs[kind][name] = spec
        return spec

    def get(self, kind: str, name: str) -> ComponentSpec:
        names = self._specs.get(kind)
        if names is None:
            raise SamoraError(f"unknown component kind {kind!r}; expected one of {', '.join(KINDS)}")
        if name not in names:
            raise SamoraError(f"no {kind} named {name!r}{did_you_mean(name, names)}; "
                              f"installed: {', '.join(sorted(names)) or 'none'}")
        return names[name]

    def names(self, kind: str) -> list[str]:
        return sorted(self._specs[kind])

    def specs(self, kind: str | None = None) -> list[ComponentSpec]:
        kinds = [kind] if kind else list(KINDS)
        return [self._specs[k][n] for k in kinds for n in sorted(self._specs[k])]

    def registering_as(self, source: str | None) -> "Registry":
        """Credit `source` with what is added from now on (load_plugins, around each hook); None: the caller."""
        self._source = source
        return self


def caller_source(frame) -> str:
    """"package (distribution version)" of the module running `frame`, as a plugin is labelled; a module
    no installed distribution holds (a script, a notebook) is labelled "<registered in process>"."""
    module = frame.f_globals.get("__name__") or "<python>"
    package = module.partition(".")[0]
    dists = _distributions().get(package)
    if not dists:
        return f"{module} (<registered in process>)"
    try:
        return f"{package} ({dists[0]} {md.version(dists[0])})"
    except md.PackageNotFoundError:
        return f"{package} ({dists[0]})"


@lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    """Top-level package -> the installed distributions holding it (read once: it scans every distribution)."""
    return md.packages_distributions()


def check_factory(kind: str, name: str, factory: Callable[..., Any]) -> None:
    """A factory takes its config as the one positional argument and accepts, by keyword, every
    argument the core passes to its kind (FACTORY_CONTEXT); it may require nothing else."""
    context, protocol = FACTORY_CONTEXT[kind]
    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):  # a builtin or C callable: nothing to read
        return
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    takes_any_keyword = any(p.kind == p.VAR_KEYWORD for p in params)
    problems = []
    if not positional and not any(p.kind == p.VAR_POSITIONAL for p in params):
        problems.append("it takes no positional argument for the config")
    rest = [p for p in params if p not in positional[:1]]
    accepted = {p.name for p in rest if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    missing = [c for c in context if c not in accepted and not takes_any_keyword]
    if missing:
        problems.append(f"it does not accept {', '.join(missing)} as keyword argument(s)")
    required = [p.name for p in rest if p.default is p.empty and p.name not in context
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if required:
        problems.append(f"it requires {', '.join(required)}, which the core never passes")
    if problems:
        expected = "config" + (", *, " + ", ".join(context) if context else "")
        raise PluginContractError(
            f"{kind} {name!r}: factory {getattr(factory, '__qualname__', factory)}{_signature(factory)} does not "
            f"match the {kind} contract {protocol.__name__}({expected}): {'; '.join(problems)}")


def _signature(factory) -> str:
    try:
        return str(inspect.signature(factory))
    except (TypeError, ValueError):
        return "(...)"


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
