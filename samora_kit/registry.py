"""kind -> name -> (pydantic config model, factory), filled by plugins."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict

from .errors import DuplicateComponentError, SamoraError

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
    source: str  # the plugin and distribution that registered it
    summary: str = ""
    example: dict = field(default_factory=dict)  # a tiny config for conformance tests

    def build(self, config: BaseModel | dict | None = None, **context):
        if config is None or isinstance(config, dict):
            config = self.config_model.model_validate(config or {})
        return self.factory(config, **context)


class Registry:
    def __init__(self) -> None:
        self._specs: dict[str, dict[str, ComponentSpec]] = {k: {} for k in KINDS}
        self._source = "<python>"

    def add(self, kind: str, name: str, config_model: type[BaseModel], factory: Callable[..., Any],
            *, summary: str = "", example: dict | None = None) -> ComponentSpec:
        if kind not in self._specs:
            raise SamoraError(f"unknown component kind {kind!r}; expected one of {', '.join(KINDS)}")
        if name in self._specs[kind]:
            other = self._specs[kind][name].source
            raise DuplicateComponentError(
                f"{kind} {name!r} is registered twice: by {other} and by {self._source}")
        spec = ComponentSpec(kind, name, config_model, factory, self._source,
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

    def registering_as(self, source: str) -> "Registry":
        self._source = source
        return self


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
