"""Task "segment": train a decoder (with the backbone's trainable parts) on labelled slices, evaluate
it on the test cases; chain a stage-1 recipe first ([pretrain]) and compare with baseline recipes
after ([compare]). Also the way back: a finished run folder rebuilt into its model."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

from .. import __version__
from ..data.slices import SliceDataset
from ..errors import CheckpointError, DataError, SamoraError
from ..eval.evaluate import evaluate, summary_table
from ..eval.validation import ValidationSet, validation_cases
from ..interfaces import DecoderObjective, experts_of
from ..plugins import default_plugins
from ..recipe import ValidationSection, dump_recipe, load_recipe, parse_recipe_text
from ..train.loop import train
from ..train.losses import DiceCELoss
from ..train.model import SegmentationModel, SegmentationObjective, build_dataset, build_model
from ..train.runfolder import RECIPE_FILE, WEIGHTS_FILE
from ..weights.io import load_weights, read_header, save_weights
from .common import Session, prior_run, run_dir_of, seed_everything
from .compare import compare_with_baselines
from .pretrain_experts import train_experts

SUMMARY_FILE = "eval/summary.json"


def run_segment(recipe, session: Session, resume: bool = False) -> Path:
    """Train and evaluate (after stage 1 when [pretrain] chains it), then compare with [compare]'s baselines."""
    if recipe.pretrain is not None:
        recipe = with_pretrained_experts(recipe, session)
    summary, class_names = train_and_evaluate(recipe, session, resume)
    if recipe.compare is not None:
        compare_with_baselines(recipe, summary, class_names, session, run_segment)
    return run_dir_of(recipe)


def train_and_evaluate(recipe, session: Session, resume: bool = False) -> tuple[dict | None, list[str]]:
    """Train and evaluate a segmentation recipe in its (locked) run folder; (summary, class names)."""
    run_dir = run_dir_of(recipe)
    with session.owned(run_dir):
        return _train_and_evaluate(recipe, session, run_dir, resume)


def _train_and_evaluate(recipe, session: Session, run_dir: Path, resume: bool) -> tuple[dict | None, list[str]]:
    registry, console, ctx = session.registry, session.console, session.ctx
    resolved = dump_recipe(recipe)
    held = prior_run(run_dir, resolved, resume, WEIGHTS_FILE)
    if held == "trained" and (run_dir / SUMMARY_FILE).is_file():
        return _finished(recipe, session, run_dir, resume)
    seed_everything(recipe.run.seed)
    adapter = build_dataset(recipe, registry)
    if held == "trained":  # stopped between its weights and its evaluation: evaluates only
        return _evaluate_trained(recipe, session, run_dir, adapter)
    resume = held == "resume"
    volumes = [adapter.load_case(c) for c in adapter.cases("train")]
    check_training_labels(volumes, console)
    model = build_model(recipe, registry, adapter.num_classes)
    dataset = SliceDataset(volumes, model.image_size, recipe.train.augment, recipe.run.seed,
                           recipe.train.foreground_only)
    validation = _validation_set(recipe, adapter, model, ctx)
    session.write_run_files(run_dir, resolved)  # only once data and model are known to be good
    if ctx.is_main:
        scored = f"; {len(validation.cases)} validation volumes" if validation else ""
        console.print(f"[bold]{escape(recipe.run.name)}[/]: {len(volumes)} training volumes, {len(dataset)} slices"
                      f"{scored}, {_count(model)} on {ctx.device}; run folder {escape(str(run_dir))}")
    header = {"samora_kit_version": __version__, "recipe": resolved,
              "backbone": recipe.backbone.name, "decoder": recipe.decoder.name}
    result = train(_objective(model, recipe.train), dataset, recipe.train, recipe.run.seed, run_dir, ctx, resume,
                   header, session.show_progress, compile_model=recipe.run.compile, validation=validation,
                   step_callbacks=session.step_callbacks)
    if not ctx.is_main:
        return None, adapter.class_names
    weights = save_weights(run_dir / WEIGHTS_FILE, model.weights_to_save(),
                           {**header, "kind": "model-weights", "step": result.steps})
    console.print(f"trained {result.describe()}; weights {escape(str(weights))}")
    return _evaluate(model, recipe, session, run_dir, adapter), adapter.class_names


def _evaluate(model: SegmentationModel, recipe, session: Session, run_dir: Path, adapter) -> dict:
    """Score the trained model on the test cases into run_dir/eval and print the summary."""
    console = session.console
    summary = evaluate(model, adapter, recipe.eval.policies, run_dir / "eval",
                       recipe.eval.batch_size, session.ctx.device, recipe.eval.overlays, console)
    console.print(summary_table(summary, adapter.class_names, f"{recipe.run.name}: test set"))
    console.print(f"reports: {escape(str(run_dir / 'eval'))}")
    return summary


def _evaluate_trained(recipe, session: Session, run_dir: Path, adapter) -> tuple[dict | None, list[str]]:
    """A run whose training finished and whose evaluation did not: its weights evaluated, nothing trained."""
    if not session.ctx.is_main:
        return None, adapter.class_names
    weights = run_dir / WEIGHTS_FILE
    session.console.print(f"{escape(str(run_dir))}: trained {read_header(weights).get('step', '?')} steps earlier "
                          f"(weights {escape(str(weights))}) but not evaluated; evaluating it", soft_wrap=True)
    model = build_model(recipe, session.registry, adapter.num_classes)
    load_model_weights(model, weights)
    model = model.to(session.ctx.device).eval()
    return _evaluate(model, recipe, session, run_dir, adapter), adapter.class_names


def _finished(recipe, session: Session, run_dir: Path, resume: bool) -> tuple[dict, list[str]]:
    """A finished run of this recipe: said so, with its summary; nothing is trained, evaluated or written."""
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    class_names = list(next(iter(summary.values()))["classes"])
    if session.ctx.is_main:
        console = session.console
        steps = read_header(run_dir / WEIGHTS_FILE).get("step", "?")
        said = "--resume: nothing to resume, " if resume else ""
        console.print(f"{said}{escape(str(run_dir))} is finished ({steps} steps, this recipe); nothing is trained "
                      "or written again (set run.output_dir=... for a new run)", soft_wrap=True)
        console.print(summary_table(summary, class_names, f"{recipe.run.name}: test set"))
        console.print(f"reports: {escape(str(run_dir / 'eval'))}")
    return summary, class_names


def _validation_set(recipe, adapter, model: SegmentationModel, ctx) -> ValidationSet | None:
    """data.val's cases (never a test case), loaded before anything trains; None without data.val."""
    cases = validation_cases(recipe, adapter)
    if not cases:
        return None
    settings = recipe.validation or ValidationSection()
    return ValidationSet(model, adapter, cases, settings.every, settings.batch_size or recipe.eval.batch_size, ctx)


def with_pretrained_experts(recipe, session: Session):
    """A copy of the recipe whose backbone.experts.packs holds the packs of the stage-1 recipe named in
    [pretrain] (run, or reused when finished); packs the recipe gives itself are kept."""
    experts = experts_of(recipe.backbone)
    if experts is None:
        raise SamoraError("[pretrain] is set but backbone.experts is not: name the experts to fuse")
    stage1 = load_pretrain_recipe(recipe, session.registry)
    unknown = experts_nobody_trains(recipe, stage1)
    if unknown:
        raise SamoraError(unknown)
    needed = [n for n in experts.names if n not in experts.packs]
    packs = train_experts(stage1, session, only=needed)
    filled = experts.model_copy(update={"packs": {**{n: packs[n] for n in needed}, **experts.packs}})
    return recipe.model_copy(update={"backbone": recipe.backbone.model_copy(update={"experts": filled})})


def load_pretrain_recipe(recipe, registry):
    """The stage-1 recipe that [pretrain] names; it must pre-train experts."""
    stage1 = load_recipe(recipe.pretrain.recipe, registry)
    if stage1.task != "pretrain_experts":
        raise SamoraError(f"pretrain.recipe = {str(recipe.pretrain.recipe)!r} is a {stage1.task!r} recipe; "
                          "expected one with task = \"pretrain_experts\"")
    return stage1


def experts_nobody_trains(recipe, stage1) -> str | None:
    """A problem when backbone.experts.names holds a name neither the stage-1 recipe trains nor a pack gives."""
    experts = experts_of(recipe.backbone)
    missing = [n for n in experts.names if n not in {e.name for e in stage1.experts} and n not in experts.packs]
    if not missing:
        return None
    return (f"backbone.experts.names {missing} are neither in pretrain.recipe ({recipe.pretrain.recipe})'s "
            "[[experts]] nor given in backbone.experts.packs")


def check_training_labels(volumes, console: Console) -> None:
    """An empty label map is worth a warning; a training set of nothing but empty ones is an error."""
    def name(volume) -> str:
        return volume.meta.get("label_source") or volume.source or volume.case_id

    empty = [v for v in volumes if v.label is not None and not v.label.any()]
    if volumes and len(empty) == len(volumes):
        raise DataError(f"every training label is empty ({', '.join(name(v) for v in empty[:3])}"
                        f"{', ...' if len(empty) > 3 else ''}): there is nothing to learn; check the label files")
    for volume in empty:
        console.print(f"[yellow]warning:[/] {escape(name(volume))}: the label map is empty (background only)",
                      soft_wrap=True)


def _objective(model: SegmentationModel, train_cfg) -> torch.nn.Module:
    """The decoder's own objective when it has one (H-SAM's two decoders), else SAMed's loss."""
    if isinstance(model.decoder, DecoderObjective):
        return model.decoder.objective(model, train_cfg.ce_weight, train_cfg.dice_weight)
    return SegmentationObjective(model, DiceCELoss(model.num_classes, train_cfg.ce_weight, train_cfg.dice_weight))


def load_run(run_dir: Path, device: torch.device = torch.device("cpu")):
    """Rebuild (recipe, dataset adapter, trained model) from a finished segmentation run folder."""
    recipe_file = run_dir / RECIPE_FILE
    if not recipe_file.is_file():
        raise SamoraError(f"{run_dir}: not a run folder (no {RECIPE_FILE})")
    registry = default_plugins().registry
    recipe = parse_recipe_text(recipe_file.read_text(), registry, str(recipe_file))
    if recipe.task != "segment":
        raise SamoraError(f"{run_dir}: a {recipe.task!r} run folder holds no segmentation model; "
                          "evaluate, predict and explain read task = \"segment\" runs")
    seed_everything(recipe.run.seed)
    adapter = build_dataset(recipe, registry)
    model = build_model(recipe, registry, adapter.num_classes)
    load_model_weights(model, run_dir / WEIGHTS_FILE)
    return recipe, adapter, model.to(device).eval()


def load_model_weights(model: SegmentationModel, path: Path) -> None:
    tensors, _ = load_weights(path)
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in tensors]
    unknown = [n for n in tensors if n not in params]
    if missing or unknown:
        raise CheckpointError(f"{path}: made for another model; missing {missing[:3]}, unexpected {unknown[:3]}")
    with torch.no_grad():
        for name, tensor in tensors.items():
            if tensor.shape != params[name].shape:
                raise CheckpointError(f"{path}: {name} has shape {tuple(tensor.shape)}, "
                                      f"the model expects {tuple(params[name].shape)}")
            params[name].copy_(tensor)


def _count(model: torch.nn.Module) -> str:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{total / 1e6:.2f} M parameters ({trainable / 1e6:.2f} M trainable)"
