import pytest
import torch

from samora_kit.errors import DuplicateComponentError, SamoraError
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
    registry.registering_as("first").add("fuser", "toy", ToyConfig, build_toy)
    with pytest.raises(DuplicateComponentError, match="registered twice: by first and by second"):
        registry.registering_as("second").add("fuser", "toy", ToyConfig, build_toy)


def test_unknown_name_suggests_the_closest():
    registry = Registry()
    registry.add("fuser", "hl_attn", ToyConfig, build_toy)
    with pytest.raises(SamoraError, match="did you mean 'hl_attn'"):
        registry.get("fuser", "hl_atn")


def test_config_rejects_unknown_keys_and_builds():
    spec = Registry().add("fuser", "toy", ToyConfig, build_toy)
    assert spec.build({"width": 3}).in_features == 3
    with pytest.raises(Exception, match="widht"):
        spec.build({"widht": 3})


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
