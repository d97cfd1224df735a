"""Every hook samora-kit calls. A plugin implements them with `samora_kit.hookimpl`."""

import pluggy

PROJECT = "samora_kit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def samora_kit_register(registry) -> None:
    """Add components: `registry.add(kind, name, ConfigModel, factory)`."""


@hookspec
def samora_kit_check_recipe(recipe, backbone) -> list[str]:
    """Problems a plugin sees in a recipe that passed its schema: cross-references between sections, or
    shapes against `backbone`, the recipe's backbone built (base weights, experts and fuser, no data).
    `samora-kit validate` calls it; return [] when all is well, else one message per problem naming the
    recipe key (e.g. "experts.2.pretext.grid = 5: must divide the backbone's 14-cell grid")."""
