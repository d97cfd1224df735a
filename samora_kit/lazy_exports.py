"""Names a plugin's entry-point module re-exports without importing them when the plugin loads (PEP 562).

Loading a plugin imports its pydantic configs and registers factories that import the model code when
called, so `samora-kit plugins`, `validate` and `--help` never wait for segment_anything, monai or timm.
Names that live beside the model code stay importable from the entry-point module through
`__getattr__ = lazy_exports(__name__, {".backbone": ("SamBackbone",)})`: the submodule loads on first use."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

from .extras import require


def lazy_exports(module: str, exports: dict[str, tuple[str, ...]],
                 requires: dict[str, str] | None = None) -> Callable[[str], object]:
    """A module-level `__getattr__` for `module`: `exports` maps a submodule (relative to `module`'s package,
    e.g. ".backbone") to the names it provides; the first read of one imports that submodule and keeps the
    value in `module`. `requires` maps a submodule to the optional package it needs (samora_kit.extras), so
    a missing one is named with its pip command instead of an ImportError."""
    where = {name: submodule for submodule, names in exports.items() for name in names}
    needs = requires or {}

    def __getattr__(name: str) -> object:
        if name not in where:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        if where[name] in needs:
            require(needs[where[name]], f"{module}.{name}")
        owner = sys.modules[module]
        value = getattr(importlib.import_module(where[name], owner.__package__), name)
        setattr(owner, name, value)  # later reads find it without calling __getattr__
        return value

    return __getattr__
