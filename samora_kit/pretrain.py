"""Self-supervised pre-training: SAMora stage 1 (one LoRA expert per [[experts]] entry, each
saved as an expert pack) and a base encoder trained from scratch ([base_pretraining]).
Finished experts (and teachers' continual pre-training) are reused, not recomputed, as long as
the parts of the recipe that made them are unchanged."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape

from . import __version__
from .errors import SamoraError
from .train.distributed import DistContext
from .train.loop import train
from .weights.expert_pack import save_expert_pack
from .weights.io import read_header, save_weights

EXPERTS_DIR, TEACHERS_DIR, STAGES_DIR = "experts", "teachers", "stages"
BASE_FILE = "base.safetensors"


def fingerprint(*parts: BaseModel | dict | list | str) -> str:
    """A short hash of recipe parts: equal hashes mean an artefact can be reused."""
    plain = [p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts]
    return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:16]


def pretrain_experts(recipe, registry, run_dir: Path, ctx: DistContext, resume: bool = False,
                     console: Console | None = None, show_progress: bool = True,
                     only: list[str] | None = None) -> dict[str, Path]:
    """Train (or reuse) the experts of a stage-1 recipe (all, or those named in `only`);
    returns {expert name: pack path}."""
    console = console or Console()
    adapter = unlabelled_source(recipe, registry)
    data_id = fingerprint(recipe.data, adapter.cases("train"))
    packs: dict[str, Path] = {}
    for entry in [e for e in recipe.experts if only is None or e.name in only]:
        key = fingerprint(recipe.backbone, recipe.train, recipe.run.seed, data_id, entry)
        pack_path = run_dir / EXPERTS_DIR / f"{entry.name}.safetensors"
        if pack_path.exists() and read_header(pack_path).get("recipe_fingerprint") == key:
            console.print(f"expert [bold]{escape(entry.name)}[/]: reusing {escape(str(pack_path))}")
            packs[entry.name] = pack_path
            continue
        from .runner import seed_everything  # late: runner imports this module

        seed_everything(recipe.run.seed)
        backbone = registry.get("backbone", recipe.backbone.name).build(recipe.backbone)
        dataset = adapter.slice_dataset(backbone.image_size)
        teacher = _teacher(entry, recipe, registry, run_dir, dataset, data_id, ctx, console, show_progress)
        task = registry.get("pretext", entry.pretext.name).build(entry.pretext, backbone=backbone, teacher=teacher)
        console.print(f"expert [bold]{escape(entry.name)}[/]: {escape(entry.pretext.name)} on {len(dataset)} "
                      "unlabelled slices"
                      + (f", teacher {escape(entry.teacher.name)}" if entry.teacher else ", no teacher"))
        result = train(task, dataset, recipe.train, recipe.run.seed, run_dir / STAGES_DIR / entry.name, ctx,
                       resume and (run_dir / STAGES_DIR / entry.name).exists(),
                       {"stage": "pretrain", "expert": entry.name}, show_progress)
        if ctx.is_main:
            pack = backbone.expert_pack(
                entry.name, pretext=entry.pretext.name, teacher=entry.teacher.name if entry.teacher else None,
                teacher_cpt=bool(entry.teacher and entry.teacher.cpt), data_fingerprint=data_id)
            save_expert_pack(pack_path, pack.tensors, {**pack.header, "recipe_fingerprint": key,
                                                       "steps": result.steps, "final_loss": result.final_loss})
            console.print(f"expert [bold]{escape(entry.name)}[/]: {result.steps} steps, final loss "
                          f"{result.final_loss:.4f} -> {escape(str(pack_path))}")
        packs[entry.name] = pack_path
    return packs


def _teacher(entry, recipe, registry, run_dir, dataset, data_id, ctx, console, show_progress):
    """The frozen teacher of an expert, after its continual pre-training when asked for."""
    if entry.teacher is None:
        return None
    teacher = registry.get("teacher", entry.teacher.name).build(entry.teacher)
    if not entry.teacher.cpt:
        return teacher
    key = fingerprint(entry.teacher, recipe.train, recipe.run.seed, data_id)
    path = run_dir / TEACHERS_DIR / f"{entry.name}-{entry.teacher.name}.safetensors"
    if path.exists() and read_header(path).get("recipe_fingerprint") == key:
        console.print(f"teacher {escape(entry.teacher.name)}: reusing continual pre-training {escape(str(path))}")
    else:
        console.print(f"teacher {escape(entry.teacher.name)}: continual pre-training for "
                      f"{entry.teacher.cpt_epochs} epoch(s)")
        schedule = recipe.train.model_copy(update={"epochs": entry.teacher.cpt_epochs})
        train(teacher.cpt_objective(), dataset, schedule, recipe.run.seed,
              run_dir / STAGES_DIR / f"{entry.name}-teacher", ctx, False, {"stage": "teacher-cpt"}, show_progress)
        if ctx.is_main:
            save_weights(path, teacher.cpt_tensors(), {"kind": "teacher", "teacher": entry.teacher.name,
                                                       "recipe_fingerprint": key, "samora_kit_version": __version__})
    teacher.load_cpt(path)
    return teacher



def pretrain_base(recipe, registry, run_dir: Path, ctx: DistContext, resume: bool = False,
                  console: Console | None = None, show_progress: bool = True) -> Path:
    """Train the whole image encoder from random weights with a teacher-free pretext task and
    save it in the backbone's official key layout (SAM's or SAM2's); its header says it is
    self-pre-trained, never SAM."""
    console = console or Console()
    adapter = unlabelled_source(recipe, registry)
    backbone = registry.get("backbone", recipe.backbone.name).build(recipe.backbone)
    if not hasattr(backbone, "encoder_state_in_official_layout"):
        raise SamoraError(f"backbone.name = {recipe.backbone.name!r} cannot export a base encoder")
    for name, param in backbone.named_parameters():
        param.requires_grad = ".lora_" not in name  # the encoder (and SAM2's neck) learns; LoRA stays zero
    task = registry.get("pretext", recipe.base_pretraining.pretext.name).build(
        recipe.base_pretraining.pretext, backbone=backbone, teacher=None)
    dataset = adapter.slice_dataset(backbone.image_size)
    console.print(f"base encoder: {escape(recipe.base_pretraining.pretext.name)} from scratch on {len(dataset)} "
                  f"unlabelled slices, {sum(p.numel() for p in task.parameters() if p.requires_grad) / 1e6:.2f} M "
                  "trainable parameters")
    result = train(task, dataset, recipe.train, recipe.run.seed, run_dir, ctx, resume,
                   {"stage": "base-pretraining"}, show_progress)
    path = run_dir / BASE_FILE
    if ctx.is_main:
        from .weights.import_sam import save_sam_layout

        header = {"format": backbone.ENCODER_ONLY_FORMAT, "origin": "self-pre-trained", "variant": backbone.variant,
                  "source_image_size": backbone.image_size, "pretext": recipe.base_pretraining.pretext.name,
                  "data_fingerprint": fingerprint(recipe.data, adapter.cases("train")), "steps": result.steps,
                  "final_loss": result.final_loss, "samora_kit_version": __version__}
        _, digest = save_sam_layout(path, backbone.encoder_state_in_official_layout(), header)
        console.print(f"base encoder: {result.steps} steps, final loss {result.final_loss:.4f} -> {escape(str(path))}\n"
                      f"use it with backbone.checkpoint = \"{escape(str(path))}\" (sha256 {digest})")
    return path


def unlabelled_source(recipe, registry):
    adapter = registry.get("dataset", recipe.data.name).build(recipe.data)
    if not hasattr(adapter, "slice_dataset"):
        raise SamoraError(f"data.name = {recipe.data.name!r} gives labelled volumes; self-supervised "
                          "pre-training needs an unlabelled image source such as 'unlabelled_pool'")
    return adapter
