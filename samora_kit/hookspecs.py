"""Every hook samora-kit calls. A plugin implements them with `samora_kit.hookimpl`."""

import pluggy

PROJECT = "samora_kit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def samora_kit_register(registry) -> None:
    """Add components: `registry.add(kind, name, ConfigModel, factory)`."""
