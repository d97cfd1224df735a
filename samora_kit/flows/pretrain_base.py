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
from .common import Session, fingerprint, run_dir_of, seed_everything

BASE_FILE = "base.safetensors"


def run_pretrain_base(recipe, session: Session, resume: bool = False) -> Path:
    run_dir = run_dir_of(recipe)
    with session.owned(run_dir):
        session.write_run_files(run_dir, dump_recipe(recipe))
        seed_everything(recipe.run.seed)
        pretrain_base(recipe, session, run_dir, resume)
    return run_dir


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
                   {"stage": "base-pretraining"}, session.show_progress, compile_model=recipe.run.compile)
    path = run_dir / BASE_FILE
    if session.ctx.is_main:
        header = {"origin": "self-pre-trained", "pretext": pretext.name,
                  "data_fingerprint": fingerprint(recipe.data, adapter.cases("train")), "steps": result.steps,
                  "final_loss": result.final_loss, "samora_kit_version": __version__}
        digest = backbone.export_encoder(path, header)
        console.print(f"base encoder: {result.steps} steps, final loss {result.final_loss:.4f} -> {escape(str(path))}\n"
                      f"use it with backbone.checkpoint = \"{escape(str(path))}\" (sha256 {digest})")
    return path
