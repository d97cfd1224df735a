"""Task "pretrain_base": the whole image encoder trained from random weights with a teacher-free
pretext task, saved in the backbone's official key layout (its header says self-pre-trained,
never SAM); a segmentation recipe then names it as `backbone.checkpoint`."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape

from .. import __version__
from ..errors import SamoraError
from ..interfaces import EncoderExport
from ..recipe import dump_recipe
from ..train.loop import train
from ..train.model import build_unlabelled_source
from ..weights.checksummed import sidecar_digest
from ..weights.io import read_header, sha256_of
from .common import Session, fingerprint, prior_run, run_dir_of, seed_everything

BASE_FILE = "base.safetensors"


def run_pretrain_base(recipe, session: Session, resume: bool = False) -> Path:
    """Train the base encoder in its run folder; a finished one (this recipe) is said so and kept as it is."""
    run_dir = run_dir_of(recipe)
    resolved = dump_recipe(recipe)
    with session.owned(run_dir):
        held = prior_run(run_dir, resolved, resume, BASE_FILE)
        if held == "trained":
            _finished(run_dir / BASE_FILE, session, resume)
        else:
            session.write_run_files(run_dir, resolved)
            seed_everything(recipe.run.seed)
            pretrain_base(recipe, session, run_dir, held == "resume")
    return run_dir


def _finished(path: Path, session: Session, resume: bool) -> None:
    if session.ctx.is_main:
        said = "--resume: nothing to resume, " if resume else ""
        steps = read_header(path).get("steps", "?")
        session.console.print(f"{said}{escape(str(path.parent))} is finished ({steps} steps, this recipe); nothing is "
                              "trained or written again (set run.output_dir=... for a new run)", soft_wrap=True)
        _say_how_to_use(session, path, sidecar_digest(path) or sha256_of(path))


def _say_how_to_use(session: Session, path: Path, digest: str) -> None:
    session.console.print(f"use it with backbone.checkpoint = \"{escape(str(path))}\" (sha256 {digest})",
                          soft_wrap=True)


def pretrain_base(recipe, session: Session, run_dir: Path, resume: bool = False) -> Path:
    registry, console = session.registry, session.console
    adapter = build_unlabelled_source(recipe, registry)
    backbone = registry.get("backbone", recipe.backbone.name).build(recipe.backbone)
    if not isinstance(backbone, EncoderExport):
        raise SamoraError(f"backbone.name = {recipe.backbone.name!r} cannot export a base encoder "
                          "(samora_kit.interfaces.EncoderExport)")
    backbone.train_whole_encoder()
    pretext = recipe.base_pretraining.pretext
    task = registry.get("pretext", pretext.name).build(pretext, backbone=backbone, teacher=None)
    dataset = adapter.slice_dataset(backbone.image_size)
    console.print(f"base encoder: {escape(pretext.name)} from scratch on {len(dataset)} unlabelled slices, "
                  f"{sum(p.numel() for p in task.parameters() if p.requires_grad) / 1e6:.2f} M trainable parameters")
    result = train(task, dataset, recipe.train, recipe.run.seed, run_dir, session.ctx, resume,
                   {"stage": "base-pretraining"}, session.show_progress, compile_model=recipe.run.compile,
                   step_callbacks=session.step_callbacks)
    path = run_dir / BASE_FILE
    if session.ctx.is_main:
        header = {"origin": "self-pre-trained", "pretext": pretext.name,
                  "data_fingerprint": fingerprint(recipe.data, adapter.cases("train")), "steps": result.steps,
                  "final_loss": result.final_loss, "samora_kit_version": __version__}
        digest = backbone.export_encoder(path, header)
        console.print(f"base encoder: {result.describe()} -> {escape(str(path))}")
        _say_how_to_use(session, path, digest)
    return path
