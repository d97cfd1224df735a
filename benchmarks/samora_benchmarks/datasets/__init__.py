"""The miniature world's source domain (issue 11), registered as the plugin "world" through the `samora_kit`
entry point (benchmarks/pyproject.toml): Kvasir-SEG read in place and generated "segment everything"
scenes. Both are InstanceSources (instances.py) that mini-SAM's promptable training reads, and
UnlabelledSources for the world's MAE and teachers."""

from samora_kit.api import hookimpl

from . import kvasir_seg, scenes
from .instances import InstanceSource

__all__ = ["InstanceSource", "kvasir_seg", "scenes"]


@hookimpl
def samora_kit_register(registry) -> None:
    registry.add("dataset", kvasir_seg.NAME, kvasir_seg.KvasirSegConfig, kvasir_seg.build_kvasir_seg,
                 example=kvasir_seg.EXAMPLE)
    registry.add("dataset", scenes.NAME, scenes.ScenesConfig, scenes.build_scenes, example=scenes.EXAMPLE)
