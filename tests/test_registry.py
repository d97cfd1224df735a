import importlib.metadata as md

import pytest
import torch

from samora_kit.errors import DuplicateComponentError, PluginContractError, SamoraError
from samora_kit.hookspecs import hookimpl
from samora_kit.plugins import default_plugins, load_plugins
from samora_kit.registry import KINDS, ComponentConfig, Registry


class ToyConfig(ComponentConfig):
    width: int = 4


def build_toy(config):
    """A toy component."""
    return torch.nn.Linear(config.width, config.width)


def test_builtin_plugins_register_through_the_entry_point_group():
    loaded = default_plugins()
    assert not loaded.failures, loaded.failures
    assert "sam" in loaded.registry.names("backbone")
    assert "samed" in loaded.registry.names("decoder")
    assert {"decathlon", "acdc", "synapse", "mni152_demo"} <= set(loaded.registry.names("dataset"))
    assert loaded.registry.get("backbone", "sam").source.startswith("sam (samora-kit ")


def test_every_kind_of_the_method_exists():
    assert set(KINDS) == {"backbone", "pretext", "teacher", "fuser", "decoder", "dataset", "importer", "converter"}


def test_duplicate_name_is_an_error_not_an_overwrite():
    registry = Registry()
    registry.registering_as("first").add("teacher", "toy", ToyConfig, build_toy)
    with pytest.raises(DuplicateComponentError, match="registered twice: by first and by second"):
        registry.registering_as("second").add("teacher", "toy", ToyConfig, build_toy)


def test_unknown_name_suggests_the_closest():
    registry = Registry()
    registry.add("teacher", "mae_vit", ToyConfig, build_toy)
    with pytest.raises(SamoraError, match="did you mean 'mae_vit'"):
        registry.get("teacher", "mae_vt")


def test_config_rejects_unknown_keys_and_builds():
    spec = Registry().add("teacher", "toy", ToyConfig, build_toy)
    assert spec.build({"width": 3}).in_features == 3
    with pytest.raises(Exception, match="widht"):
        spec.build({"widht": 3})


def test_a_factory_must_match_its_kinds_signature():
    def fuser_without_context(config):
        return None

    def fuser_wanting_more(config, *, dim, num_heads, expert_names, temperature):
        return None

    def fuser_taking_anything(config, **context):
        return None

    def fuser(config, *, dim: int, num_heads: int, expert_names: list[str]):
        return None

    registry = Registry()
    with pytest.raises(PluginContractError, match=r"fuser 'a': factory .*fuser_without_context\(config\) does not "
                                                  r"match the fuser contract FuserComponentFactory\(config, \*, dim, "
                                                  r"num_heads, expert_names\): it does not accept dim, num_heads, "
                                                  r"expert_names as keyword argument\(s\)"):
        registry.add("fuser", "a", ToyConfig, fuser_without_context)
    with pytest.raises(PluginContractError, match="it requires temperature, which the core never passes"):
        registry.add("fuser", "b", ToyConfig, fuser_wanting_more)
    with pytest.raises(PluginContractError, match="the config model must be a pydantic BaseModel"):
        registry.add("fuser", "c", dict, fuser)
    registry.add("fuser", "d", ToyConfig, fuser_taking_anything)
    registry.add("fuser", "e", ToyConfig, fuser)
    assert registry.names("fuser") == ["d", "e"]  # the refused ones left nothing behind


class BrokenPlugin:
    @hookimpl
    def samora_kit_register(self, registry):
        raise RuntimeError("cannot find libfoo")


class DuplicatingPlugin:
    @hookimpl
    def samora_kit_register(self, registry):
        registry.add("backbone", "sam", ToyConfig, build_toy)


def test_failing_plugin_is_reported_by_name_and_the_rest_still_loads():
    loaded = load_plugins(extra=[BrokenPlugin(), DuplicatingPlugin()])
    failed = {f.name: f.error for f in loaded.failures}
    assert "cannot find libfoo" in failed["BrokenPlugin"]
    assert "registered twice" in failed["DuplicatingPlugin"]
    assert "sam" in loaded.registry.names("backbone")


class SourceClaimingPlugin:
    @hookimpl
    def samora_kit_register(self, registry):
        registry.add("teacher", "claimed", ToyConfig, build_toy, source="someone else")


def test_add_outside_a_hook_credits_the_calling_package_or_the_source_it_is_given():
    loaded = load_plugins(extra=[SourceClaimingPlugin()])
    registry = loaded.registry  # every hook has run: none of the plugins is credited with what follows
    assert registry.get("teacher", "claimed").source == "SourceClaimingPlugin (<registered in process>)"  # a hook's
    own = registry.add("teacher", "own", ToyConfig, build_toy)
    assert own.source == "tests.test_registry (<registered in process>)"  # no distribution holds tests/
    named = registry.add("teacher", "named", ToyConfig, build_toy, source="my-lab")
    assert named.source == "my-lab"
    # a module of an installed distribution: its package and the distribution
    module = {"__name__": "samora_kit_plugins.my_teacher", "registry": registry, "ToyConfig": ToyConfig,
              "build_toy": build_toy}
    exec("spec = registry.add('teacher', 'packaged', ToyConfig, build_toy)", module)
    assert module["spec"].source == f"samora_kit_plugins (samora-kit {md.version('samora-kit')})"
    with pytest.raises(DuplicateComponentError, match="registered twice: by tests.test_registry "
                                                      r"\(<registered in process>\) and by my-lab"):
        registry.add("teacher", "own", ToyConfig, build_toy, source="my-lab")
