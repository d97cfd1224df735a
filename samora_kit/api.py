"""samora-kit's public API: every name a plugin, a benchmark package or a user's script may import from the
core. Everything else under `samora_kit` is private and may change between releases; tests/test_layout.py
fails when `plugins/`, `examples/` or the benchmarks package (`benchmarks/samora_benchmarks/`) import a
private module. (`samora_kit.testing`, the conformance suite, is public too.)

    from samora_kit.api import ComponentConfig, SamoraError, hookimpl

Names load on first use (PEP 562), so importing this module is cheap: a plugin that imports its config base
from here does not pull in the training loop. The groups:

- registering components: `hookimpl`, `ComponentConfig`, `did_you_mean`, `lazy_exports`, `default_registry`,
  `load_plugins`;
- the contracts (samora_kit.interfaces): the component Protocols, their optional capabilities, the config
  capabilities and the factory types;
- errors: `SamoraError`, `RecipeError`, `DataError`, `CheckpointError`;
- optional libraries: `require`, `missing_message`;
- data: `Volume`, `CaseSelection`, `IntensityConfig`, `normalise`, `read_nifti`, `check_same_geometry`,
  `slice_to_model_input`, `SliceDataset`, `AugmentConfig`;
- recipes and runs (the training entry point): `run`, `load_recipe`, `parse_recipe_text`, `TrainSection`,
  `train`, `StepCallback`, `TrainResult`, `DistContext`, `resolve_device`, `build_model`, `SegmentationModel`,
  `SegmentationObjective`, `DiceCELoss`, and what the benchmarks time of a run: `run_loader`, `RunBatches`,
  `build_optimizer`, `inference_dtype`, `autocast_dtype`;
- fingerprints: `fingerprint`, `seed_everything`;
- the run folder: `run_folder_lock`, `run_dir_of`, `RECIPE_FILE`, `STATE_FILE`, `WEIGHTS_FILE`;
- checksummed I/O: `save_weights`, `load_weights`, `read_header`, `sha256_of`, `atomic_write`,
  `atomic_write_text`, `save_checksummed`, `read_checksummed`, `sidecar_digest`, `load_pth_state_dict`
  (the one pickle path, `weights_only=True`), `import_checkpoint`;
- evaluation: `predict_volume`, `validation_records`, `group_curve`, `save_curves_plot`, `read_diagnostics`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import __version__  # noqa: F401 (public: the kit's version)
from .lazy_exports import lazy_exports

_INTERFACES = (
    "Backbone", "PretrainableBackbone", "Decoder", "PretextTask", "Teacher", "Fuser", "LoraMerger",
    "DatasetAdapter", "FeaturePyramid", "embedding_of",
    "ProjectionFolding", "ParameterGroups", "Diagnostics", "EpochAware", "DecoderObjective", "UnlabelledSource",
    "ExpertPackSource", "EncoderExport", "ContinualPretraining",
    "ExpertPacks", "ChainsExpertPacks", "ContinualPretrainingConfig", "ValidationCases", "IntensitySettings",
    "SliceAxis", "wants_cpt", "experts_of",
    "FuserFactory", "BackboneFactory", "PretextFactory", "TeacherFactory", "FuserComponentFactory",
    "DecoderFactory", "DatasetFactory", "ImporterFactory", "ConverterFactory",
)

_EXPORTS: dict[str, tuple[str, ...]] = {
    ".hookspecs": ("hookimpl",),
    ".registry": ("ComponentConfig", "did_you_mean"),
    ".plugins": ("default_registry", "load_plugins"),
    ".interfaces": _INTERFACES,
    ".errors": ("SamoraError", "RecipeError", "DataError", "CheckpointError"),
    ".extras": ("require", "missing_message"),
    ".data.volume": ("Volume",),
    ".data.selection": ("CaseSelection",),
    ".data.intensity": ("IntensityConfig", "normalise"),
    ".data.nifti": ("read_nifti", "check_same_geometry"),
    ".data.slices": ("slice_to_model_input", "SliceDataset", "AugmentConfig"),
    ".runner": ("run",),
    ".recipe": ("load_recipe", "parse_recipe_text", "TrainSection"),
    ".train.loop": ("train", "StepCallback", "TrainResult", "autocast_dtype"),
    ".train.distributed": ("DistContext",),
    ".train.loader": ("run_loader", "RunBatches"),
    ".train.optim": ("build_optimizer",),
    ".devices": ("resolve_device", "inference_dtype"),
    ".train.model": ("build_model", "SegmentationModel", "SegmentationObjective"),
    ".train.losses": ("DiceCELoss",),
    ".flows.common": ("fingerprint", "seed_everything", "run_dir_of"),
    ".train.lock": ("run_folder_lock",),
    ".train.runfolder": ("RECIPE_FILE", "STATE_FILE", "WEIGHTS_FILE"),
    ".weights.io": ("save_weights", "load_weights", "read_header", "sha256_of", "atomic_write", "atomic_write_text"),
    ".weights.checksummed": ("save_checksummed", "read_checksummed", "sidecar_digest"),
    ".weights.pth": ("load_pth_state_dict",),
    ".weights.imports": ("import_checkpoint",),
    ".eval.inference": ("predict_volume",),
    ".eval.curves": ("validation_records", "group_curve", "save_curves_plot"),
    ".eval.explain": ("read_diagnostics",),
}

__all__ = sorted({"__version__", "lazy_exports", *(name for names in _EXPORTS.values() for name in names)})

__getattr__ = lazy_exports(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # what editors and type checkers see; at run time each name loads on first use
    from .data.intensity import IntensityConfig, normalise  # noqa: F401
    from .data.nifti import check_same_geometry, read_nifti  # noqa: F401
    from .data.selection import CaseSelection  # noqa: F401
    from .data.slices import AugmentConfig, SliceDataset, slice_to_model_input  # noqa: F401
    from .data.volume import Volume  # noqa: F401
    from .devices import inference_dtype, resolve_device  # noqa: F401
    from .errors import CheckpointError, DataError, RecipeError, SamoraError  # noqa: F401
    from .eval.curves import group_curve, save_curves_plot, validation_records  # noqa: F401
    from .eval.explain import read_diagnostics  # noqa: F401
    from .eval.inference import predict_volume  # noqa: F401
    from .extras import missing_message, require  # noqa: F401
    from .flows.common import fingerprint, run_dir_of, seed_everything  # noqa: F401
    from .hookspecs import hookimpl  # noqa: F401
    from .interfaces import *  # noqa: F401, F403
    from .plugins import default_registry, load_plugins  # noqa: F401
    from .recipe import TrainSection, load_recipe, parse_recipe_text  # noqa: F401
    from .registry import ComponentConfig, did_you_mean  # noqa: F401
    from .runner import run  # noqa: F401
    from .train.distributed import DistContext  # noqa: F401
    from .train.loader import RunBatches, run_loader  # noqa: F401
    from .train.lock import run_folder_lock  # noqa: F401
    from .train.loop import StepCallback, TrainResult, autocast_dtype, train  # noqa: F401
    from .train.losses import DiceCELoss  # noqa: F401
    from .train.model import SegmentationModel, SegmentationObjective, build_model  # noqa: F401
    from .train.optim import build_optimizer  # noqa: F401
    from .train.runfolder import RECIPE_FILE, STATE_FILE, WEIGHTS_FILE  # noqa: F401
    from .weights.checksummed import read_checksummed, save_checksummed, sidecar_digest  # noqa: F401
    from .weights.imports import import_checkpoint  # noqa: F401
    from .weights.pth import load_pth_state_dict  # noqa: F401
    from .weights.io import atomic_write, atomic_write_text, load_weights, read_header, save_weights, sha256_of  # noqa: F401
