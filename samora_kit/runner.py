"""From a recipe to a trained and evaluated run folder; and back from a run folder."""

from __future__ import annotations

import json
import random
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape

from . import __version__
from .data.slices import SliceDataset
from .errors import CheckpointError, DataError, SamoraError
from .eval.evaluate import comparison_table, evaluate, summary_table
from .plugins import default_plugins
from .pretrain import pretrain_base, pretrain_experts
from .recipe import dump_recipe, load_recipe, parse_recipe_text
from .train.distributed import init_distributed, shutdown
from .train.lock import run_folder_lock
from .train.loop import train
from .train.losses import DiceCELoss
from .train.model import SegmentationModel, SegmentationObjective, build_dataset, build_model
from .train.runfolder import RECIPE_FILE, STATE_FILE, WEIGHTS_FILE, environment, write_run_files
from .weights.io import load_weights, save_weights


def run_dir_of(recipe) -> Path:
    return Path(recipe.run.output_dir) if recipe.run.output_dir else Path("runs") / recipe.run.name


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run(recipe_path: Path, overrides: list[str], resume: bool, argv: list[str],
        console: Console | None = None, show_progress: bool = True) -> Path:
    console = console or Console()
    plugins = default_plugins()
    recipe = load_recipe(recipe_path, plugins.registry, overrides)
    ctx = init_distributed(recipe.run.device)
    run_dir = run_dir_of(recipe)
    try:
        if recipe.experts:
            _run_pretraining(recipe, plugins, ctx, resume, argv, console, show_progress)
            return run_dir
        with _owned(run_dir, ctx):
            if recipe.base_pretraining is not None:
                if ctx.is_main:
                    write_run_files(run_dir, dump_recipe(recipe), environment(ctx.device, plugins.sources), argv)
                seed_everything(recipe.run.seed)
                pretrain_base(recipe, plugins.registry, run_dir, ctx, resume, console, show_progress)
                return run_dir
            summary, class_names = _segmentation(recipe, plugins, ctx, resume, argv, console, show_progress)
    finally:
        shutdown()
    if recipe.compare is not None and ctx.is_main:
        _compare(recipe, summary, class_names, plugins, argv, console, show_progress, ctx)
    return run_dir


def _segmentation(recipe, plugins, ctx, resume, argv, console, show_progress) -> tuple[dict | None, list[str]]:
    """Train and evaluate a segmentation recipe in its (locked) run folder; (summary, class names)."""
    if recipe.pretrain is not None:
        _fill_packs_from_pretraining(recipe, plugins, ctx, argv, console, show_progress)
    resolved = dump_recipe(recipe)
    run_dir = run_dir_of(recipe)
    _check_run_dir(run_dir, resolved, resume)
    seed_everything(recipe.run.seed)
    adapter = build_dataset(recipe, plugins.registry)
    volumes = [adapter.load_case(c) for c in adapter.cases("train")]
    check_training_labels(volumes, console)
    model = build_model(recipe, plugins.registry, adapter.num_classes)
    dataset = SliceDataset(volumes, model.image_size, recipe.train.augment, recipe.run.seed,
                           recipe.train.foreground_only)
    if ctx.is_main:  # only once data and model are known to be good
        write_run_files(run_dir, resolved, environment(ctx.device, plugins.sources), argv)
        console.print(f"[bold]{escape(recipe.run.name)}[/]: {len(volumes)} training volumes, {len(dataset)} slices, "
                      f"{_count(model)} on {ctx.device}; run folder {escape(str(run_dir))}")
    header = {"samora_kit_version": __version__, "recipe": resolved,
              "backbone": recipe.backbone.name, "decoder": recipe.decoder.name}
    result = train(_objective(model, recipe.train), dataset, recipe.train, recipe.run.seed, run_dir, ctx, resume,
                   header, show_progress)
    if not ctx.is_main:
        return None, adapter.class_names
    weights = save_weights(run_dir / WEIGHTS_FILE, model.weights_to_save(),
                           {**header, "kind": "model-weights", "step": result.steps})
    console.print(f"trained {result.steps} steps, final loss {result.final_loss:.4f}; weights {escape(str(weights))}")
    summary = evaluate(model, adapter, recipe.eval.policies, run_dir / "eval",
                       recipe.eval.batch_size, ctx.device, recipe.eval.overlays, console)
    console.print(summary_table(summary, adapter.class_names, f"{recipe.run.name}: test set"))
    console.print(f"reports: {escape(str(run_dir / 'eval'))}")
    return summary, adapter.class_names


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


def _owned(run_dir: Path, ctx):
    """The run folder's lock, held by the main process (the other ranks write nothing there)."""
    return run_folder_lock(run_dir) if ctx.is_main else nullcontext()


def _objective(model: SegmentationModel, train_cfg) -> torch.nn.Module:
    """The decoder's own objective when it has one (H-SAM's two decoders), else SAMed's loss."""
    own = getattr(model.decoder, "objective", None)
    if own is not None:
        return own(model, train_cfg.ce_weight, train_cfg.dice_weight)
    return SegmentationObjective(model, DiceCELoss(model.num_classes, train_cfg.ce_weight, train_cfg.dice_weight))


def _compare(recipe, summary, class_names, plugins, argv, console, show_progress, ctx) -> None:
    """Run (or reuse) each baseline recipe and print its scores beside this run's."""
    if ctx.world_size > 1:
        console.print("[yellow]compare: skipped under torchrun; run the baselines on their own[/]")
        return
    summaries = {recipe.run.name: summary}
    for path in recipe.compare.recipes:
        other = load_recipe(path, plugins.registry)
        other_dir = run_dir_of(other)
        report = other_dir / "eval" / "summary.json"
        finished = report.exists() and (other_dir / RECIPE_FILE).read_text() == dump_recipe(other)
        if finished:
            console.print(f"compare: reusing the finished run {escape(str(other_dir))}")
        else:
            run(path, [], (other_dir / STATE_FILE).exists(), argv, console, show_progress)
        summaries[other.run.name] = json.loads(report.read_text())
    for policy in recipe.eval.policies:
        console.print(comparison_table(summaries, class_names, policy))


def _run_pretraining(recipe, plugins, ctx, resume, argv, console, show_progress,
                     only: list[str] | None = None) -> dict[str, Path]:
    """Stage 1 in its own run folder; returns {expert name: pack path}."""
    run_dir = run_dir_of(recipe)
    with _owned(run_dir, ctx):
        if ctx.is_main:
            write_run_files(run_dir, dump_recipe(recipe), environment(ctx.device, plugins.sources), argv)
        packs = pretrain_experts(recipe, plugins.registry, run_dir, ctx, resume, console, show_progress, only)
    if ctx.is_main:
        listing = "\n".join(f"  {escape(name)}: {escape(str(path))}" for name, path in packs.items())
        console.print(f"expert packs:\n{listing}")
    return packs


def _fill_packs_from_pretraining(recipe, plugins, ctx, argv, console, show_progress) -> None:
    """Run (or reuse) the stage-1 recipe named in [pretrain]; its packs fill backbone.experts.packs."""
    experts = getattr(recipe.backbone, "experts", None)
    if experts is None:
        raise SamoraError("[pretrain] is set but backbone.experts is not: name the experts to fuse")
    stage1 = load_recipe(recipe.pretrain.recipe, plugins.registry)
    missing = [n for n in experts.names if n not in {e.name for e in stage1.experts} and n not in experts.packs]
    if missing:
        raise SamoraError(f"backbone.experts.names {missing} are neither in {recipe.pretrain.recipe}'s "
                          "[[experts]] nor given in backbone.experts.packs")
    needed = [n for n in experts.names if n not in experts.packs]
    packs = _run_pretraining(stage1, plugins, ctx, False, argv, console, show_progress, only=needed)
    experts.packs = {**{n: packs[n] for n in needed}, **experts.packs}


def load_run(run_dir: Path, device: torch.device = torch.device("cpu")):
    """Rebuild (recipe, dataset adapter, trained model) from a finished run folder."""
    recipe_file = run_dir / RECIPE_FILE
    if not recipe_file.is_file():
        raise SamoraError(f"{run_dir}: not a run folder (no {RECIPE_FILE})")
    registry = default_plugins().registry
    recipe = parse_recipe_text(recipe_file.read_text(), registry, str(recipe_file))
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


def _check_run_dir(run_dir: Path, resolved: str, resume: bool) -> None:
    saved = run_dir / RECIPE_FILE
    if resume:
        if not (run_dir / STATE_FILE).exists():
            raise SamoraError(f"--resume: {run_dir / STATE_FILE} does not exist; nothing to resume")
        if saved.exists() and saved.read_text() != resolved:
            raise SamoraError(f"--resume: the recipe differs from {saved}; resume with the same "
                              "recipe and overrides, or start a new run.output_dir")
    elif (run_dir / STATE_FILE).exists() or (run_dir / WEIGHTS_FILE).exists():
        raise SamoraError(f"{run_dir} already holds a run; pass --resume to continue it, or set "
                          f"run.output_dir=... (or run.name=...) for a new one")


def _count(model: torch.nn.Module) -> str:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{total / 1e6:.2f} M parameters ({trainable / 1e6:.2f} M trainable)"
