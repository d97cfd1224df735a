"""One PluginManager: every plugin, built-in or third-party, comes in through the
entry-point group `samora_kit` and registers components with one hook."""

from __future__ import annotations

import importlib.metadata as md
import os
from dataclasses import dataclass, field
from functools import lru_cache

import pluggy

from . import hookspecs
from .registry import Registry

ENTRY_POINT_GROUP = "samora_kit"
DISABLE_AUTOLOAD = "SAMORA_KIT_DISABLE_PLUGIN_AUTOLOAD"


@dataclass
class PluginFailure:
    name: str
    distribution: str
    error: str


@dataclass
class LoadedPlugins:
    registry: Registry
    manager: pluggy.PluginManager
    failures: list[PluginFailure] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # plugin name -> "dist version"


def _dist_label(ep: md.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "<unknown distribution>"


def load_plugins(extra: list | tuple = ()) -> LoadedPlugins:
    """Discover and register plugins. `extra` are plugin modules/objects given directly
    (for tests and the Python API); they register exactly like entry-point plugins."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    loaded = LoadedPlugins(Registry(), pm)
    candidates: list[tuple[str, str, object]] = []
    if os.environ.get(DISABLE_AUTOLOAD, "") in ("", "0"):
        for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            try:
                candidates.append((ep.name, _dist_label(ep), ep.load()))
            except Exception as exc:  # a broken plugin must not break the CLI
                loaded.failures.append(PluginFailure(ep.name, _dist_label(ep), f"{type(exc).__name__}: {exc}"))
    for obj in extra:
        name = getattr(obj, "__name__", type(obj).__name__)
        candidates.append((name, "<registered in process>", obj))
    for name, dist, obj in candidates:
        if pm.is_registered(obj) or pm.has_plugin(name):
            continue
        try:
            pm.register(obj, name=name)
            hook = getattr(obj, "samora_kit_register", None)
            if hook is not None:
                try:
                    hook(registry=loaded.registry.registering_as(f"{name} ({dist})"))
                finally:  # what is added after the hooks is credited to whoever adds it
                    loaded.registry.registering_as(None)
            loaded.sources[name] = dist
        except Exception as exc:
            if pm.is_registered(obj):
                pm.unregister(obj)
            loaded.failures.append(PluginFailure(name, dist, f"{type(exc).__name__}: {exc}"))
    pm.check_pending()
    return loaded


@lru_cache(maxsize=1)
def default_plugins() -> LoadedPlugins:
    """The installed plugins, loaded once per process."""
    return load_plugins()


def default_registry() -> Registry:
    return default_plugins().registry
