"""How long a recipe's training runs, worked out from its data before any model is built:
`samora-kit validate` prints it and refuses a warm-up that outlasts the run."""

from __future__ import annotations

from ..data.slices import SliceDataset
from ..interfaces import wants_cpt
from ..registry import Registry
from .model import build_dataset, build_unlabelled_source
from .schedule import RunLength, run_length


def training_samples(recipe, registry: Registry) -> int:
    """Training slices of a segmentation recipe's labelled cases, or of a pre-training recipe's pool."""
    if recipe.task == "segment":
        adapter = build_dataset(recipe, registry)
        volumes = [adapter.load_case(case) for case in adapter.cases("train")]
        return len(SliceDataset(volumes, 1, None, recipe.run.seed, recipe.train.foreground_only))
    return len(build_unlabelled_source(recipe, registry).slice_dataset(1))


def planned_runs(recipe, registry: Registry) -> list[tuple[str, RunLength]]:
    """(what, its length) for every training run the recipe starts itself; SamoraError when one cannot run
    (a batch larger than the data, a warm-up not shorter than the run). Reads the data's training cases."""
    samples = training_samples(recipe, registry)
    runs = [("training", run_length(recipe.train, samples))]
    for entry in recipe.experts if recipe.task == "pretrain_experts" else []:
        if wants_cpt(entry.teacher):
            schedule = recipe.train.model_copy(update={"epochs": entry.teacher.cpt_epochs})
            runs.append((f"continual pre-training of {entry.name}'s teacher", run_length(schedule, samples)))
    return runs
