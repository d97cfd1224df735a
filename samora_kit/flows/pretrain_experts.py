"""Task "pretrain_experts", SAMora stage 1: one LoRA expert per [[experts]] entry, each trained with
its pretext task (and teacher) on unlabelled slices and saved as an expert pack. Finished experts
(and teachers' continual pre-training) are reused, not recomputed, as long as the parts of the
recipe that made them are unchanged."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape

from .. import __version__
from ..errors import SamoraError
from ..interfaces import ContinualPretraining, ExpertPackSource, wants_cpt
from ..recipe import dump_recipe
from ..train.loop import train
from ..train.model import build_unlabelled_source
from ..train.runfolder import STATE_FILE
from ..weights.io import read_header, save_weights
from .common import Session, fingerprint, run_dir_of, seed_everything

EXPERTS_DIR, TEACHERS_DIR, STAGES_DIR = "experts", "teachers", "stages"


def run_pretrain_experts(recipe, session: Session, resume: bool = False) -> Path:
    """Stage 1 in its own run folder."""
    train_experts(recipe, session, resume)
    return run_dir_of(recipe)


def train_experts(recipe, session: Session, resume: bool = False, only: list[str] | None = None) -> dict[str, Path]:
    """Train (or reuse) the experts of a stage-1 recipe (all, or those named in `only`) in its locked
    run folder; returns {expert name: pack path}."""
    run_dir = run_dir_of(recipe)
    with session.owned(run_dir):
        packs, trained = _train_experts(recipe, session, run_dir, resume, only)
    if session.ctx.is_main:
        if not trained:
            said = "--resume: nothing to resume, " if resume else ""
            session.console.print(f"{said}every expert pack of {escape(str(run_dir))} is finished (this recipe); "
                                  "nothing is trained or written again", soft_wrap=True)
        listing = "\n".join(f"  {escape(name)}: {escape(str(path))}" for name, path in packs.items())
        session.console.print(f"expert packs:\n{listing}")
    return packs


def _train_experts(recipe, session: Session, run_dir: Path, resume: bool,
                   only: list[str] | None) -> tuple[dict[str, Path], list[str]]:
    """({expert name: pack path}, the names trained now); the run files are written before the first
    expert that trains, so a stage whose packs are all reused is left as it is."""
    registry, console, ctx = session.registry, session.console, session.ctx
    adapter = build_unlabelled_source(recipe, registry)
    data_id = fingerprint(recipe.data, adapter.cases("train"))
    packs: dict[str, Path] = {}
    trained: list[str] = []
    for entry in [e for e in recipe.experts if only is None or e.name in only]:
        key = fingerprint(recipe.backbone, recipe.train, recipe.run.seed, data_id, entry)
        pack_path = run_dir / EXPERTS_DIR / f"{entry.name}.safetensors"
        if pack_path.exists() and read_header(pack_path).get("recipe_fingerprint") == key:
            console.print(f"expert [bold]{escape(entry.name)}[/]: reusing {escape(str(pack_path))}")
            packs[entry.name] = pack_path
            continue
        if not trained:
            session.write_run_files(run_dir, dump_recipe(recipe))
        trained.append(entry.name)
        seed_everything(recipe.run.seed)
        backbone = registry.get("backbone", recipe.backbone.name).build(recipe.backbone)
        if not isinstance(backbone, ExpertPackSource):
            raise SamoraError(f"backbone.name = {recipe.backbone.name!r} cannot train experts: it does not write "
                              "expert packs (samora_kit.interfaces.ExpertPackSource)")
        dataset = adapter.slice_dataset(backbone.image_size)
        teacher = _teacher(entry, recipe, session, run_dir, dataset, data_id)
        task = registry.get("pretext", entry.pretext.name).build(entry.pretext, backbone=backbone, teacher=teacher)
        console.print(f"expert [bold]{escape(entry.name)}[/]: {escape(entry.pretext.name)} on {len(dataset)} "
                      "unlabelled slices"
                      + (f", teacher {escape(entry.teacher.name)}" if entry.teacher else ", no teacher"))
        stage_dir = run_dir / STAGES_DIR / entry.name
        resumed = resume and (stage_dir / STATE_FILE).exists()  # an expert killed before its first state starts over
        result = train(task, dataset, recipe.train, recipe.run.seed, stage_dir, ctx, resumed,
                       {"stage": "pretrain", "expert": entry.name}, session.show_progress,
                       compile_model=recipe.run.compile, step_callbacks=session.step_callbacks)
        if ctx.is_main:
            provenance = {"pretext": entry.pretext.name, "teacher": entry.teacher.name if entry.teacher else None,
                          "teacher_cpt": wants_cpt(entry.teacher), "data_fingerprint": data_id}
            backbone.write_expert_pack(pack_path, entry.name, provenance=provenance, extra_header={
                "recipe_fingerprint": key, "steps": result.steps, "final_loss": result.final_loss})
            console.print(f"expert [bold]{escape(entry.name)}[/]: {result.describe()} -> {escape(str(pack_path))}")
        packs[entry.name] = pack_path
    return packs, trained


def _teacher(entry, recipe, session: Session, run_dir: Path, dataset, data_id: str):
    """The frozen teacher of an expert, after its continual pre-training when asked for."""
    if entry.teacher is None:
        return None
    teacher = session.registry.get("teacher", entry.teacher.name).build(entry.teacher)
    if not wants_cpt(entry.teacher):
        return teacher
    if not isinstance(teacher, ContinualPretraining):
        raise SamoraError(f"experts {entry.name!r}: teacher {entry.teacher.name!r} cannot be continually "
                          "pre-trained (samora_kit.interfaces.ContinualPretraining); set teacher.cpt = false")
    console = session.console
    key = fingerprint(entry.teacher, recipe.train, recipe.run.seed, data_id)
    path = run_dir / TEACHERS_DIR / f"{entry.name}-{entry.teacher.name}.safetensors"
    if path.exists() and read_header(path).get("recipe_fingerprint") == key:
        console.print(f"teacher {escape(entry.teacher.name)}: reusing continual pre-training {escape(str(path))}")
    else:
        console.print(f"teacher {escape(entry.teacher.name)}: continual pre-training for "
                      f"{entry.teacher.cpt_epochs} epoch(s)")
        schedule = recipe.train.model_copy(update={"epochs": entry.teacher.cpt_epochs})
        train(teacher.cpt_objective(), dataset, schedule, recipe.run.seed, run_dir / STAGES_DIR / f"{entry.name}-teacher",
              session.ctx, False, {"stage": "teacher-cpt"}, session.show_progress, compile_model=recipe.run.compile,
              step_callbacks=session.step_callbacks)
        if session.ctx.is_main:
            save_weights(path, teacher.cpt_tensors(), {"kind": "teacher", "teacher": entry.teacher.name,
                                                       "recipe_fingerprint": key, "samora_kit_version": __version__})
    teacher.load_cpt(path)
    return teacher
