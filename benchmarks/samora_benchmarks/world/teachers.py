"""Mini-teachers (issue 11, point 3): a SimCLRv2 ResNet and an MAE ViT trained from random weights on the
source domain, each by its own continual-pre-training objective (`cpt_objective()`: NT-Xent, masked
autoencoding) through the kit's loop, then exported in the official layouts that the teacher loaders read
for the real checkpoints, so stage 1 imports them as it would import `r50_2x_sk1.pth` and
`mae_pretrain_vit_large.pth`.

    python -m samora_benchmarks.world.teachers --out runs/world/teachers                       # CPU, ~10 min each
    python -m samora_benchmarks.world.teachers --source scenes --image-size 128 --out DIR --scale gpu
    python -m samora_benchmarks.world.teachers --out /tmp/teachers --steps 3                   # a smoke run

Files in --out:
- simclrv2_mini.pth: `{"resnet": state dict, "head": state dict}`, what Separius/SimCLRv2-Pytorch's
  convert.py writes (no `resnet.fc.*`: the mini-teacher never had a supervised classifier; the loader
  ignores that key anyway);
- mae_mini.pth: `{"model": state dict}` in facebookresearch/mae's key names, encoder and decoder (the
  layout of MAE's `mae_visualize_*.pth`), so CPT in stage 1 starts from the trained decoder;
- <name>.json: settings, fingerprint, sha256, timings, losses and the recipe's `teacher = {...}` table;
- <name>/: the training run (metrics.jsonl, checkpoints/last.safetensors).
A rerun with the same settings reuses the files; an interrupted one resumes from its checkpoint; a finished
teacher of other settings in the same --out is refused, not replaced (a stage-1 recipe names the file by
path, so swapping its content under an unchanged path would let stage 1 reuse stale results).

Decisions (measured on the 2-core CPU at 128 px, batch 64, source "both"):
- SimCLRv2: ResNet-18 at width 1x without selective kernels. SK cost 1.8x per training step (4.5 s against
  2.5 s of model time), in training here and again in every CPT and distillation step of stage 1, so it is
  left out. One architecture for both scales, so the stage-1 recipes read either file.
- CPU preset: 200 NT-Xent steps at 3.1 s (0.32 steps/s) and 1250 MAE steps at 0.48 s (2.1 steps/s) with the
  kit's loop, data and checkpoints included: about 10 minutes each.
- MAE: ViT with width 192, depth 6, 3 heads, 16-px patches at the image size the target SAM uses (the mae
  pretext pairs teacher and SAM tokens position by position), decoder 128 wide, 2 blocks.
- Both at 128 px, the target recipes' SAM size (issue 4: 64 px is too coarse for the targets).
- Kvasir-SEG images are stretched to the square (a teacher has no use for letterbox bars) and its split's
  100 test images are left out, as mini-SAM leaves them out; the scenes are source_mae.toml's (seed 0).
- BatchNorm statistics are recomputed after training as exact averages over fixed batches ("precise BN"):
  the loop's checkpoints hold trainable weights, not BatchNorm buffers, so this makes the exported teacher
  the same whether or not its run was resumed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from samora_kit.api import (DistContext, STATE_FILE, SamoraError, StepCallback, TrainSection, atomic_write,
                            atomic_write_text, default_registry, fingerprint, read_header, run_folder_lock,
                            seed_everything, sha256_of, train)

from samora_benchmarks.world.cli import add_common_flags, exit_code, preset_with_flags

REPO = Path(__file__).resolve().parents[3]
KVASIR_ROOT = REPO.parent / "shared" / "data" / "kvasir_seg"
SOURCES = ("scenes", "kvasir_seg", "both")
TRAINING_VERSION = 1  # bump when a change here changes what the same settings train
# key -> (registry name, file stem in --out)
TEACHERS = {"simclrv2": ("simclrv2_resnet", "simclrv2_mini"), "mae": ("mae_vit", "mae_mini")}


@dataclass(frozen=True)
class TeacherPlan:
    """One teacher: its architecture (the recipe's teacher table without name and checkpoint; the MAE's
    image_size comes from Settings) and its training schedule (AdamW, warm-up, cosine)."""

    architecture: dict
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: float = 0.05
    checkpoint_every: int = 50


SIMCLRV2_ARCHITECTURE = {"depth": 18, "width_multiplier": 1, "selective_kernel": False, "projection_dim": 128}
MAE_ARCHITECTURE = {"patch_size": 16, "embed_dim": 192, "depth": 6, "num_heads": 3,
                    "decoder_embed_dim": 128, "decoder_depth": 2, "decoder_num_heads": 4}


@dataclass(frozen=True)
class Settings:
    source: str = "both"  # scenes | kvasir_seg | both
    image_size: int = 128
    num_scenes: int = 4096
    scenes_seed: int = 0
    seed: int = 1234
    simclrv2: TeacherPlan = field(default_factory=lambda: TeacherPlan(
        SIMCLRV2_ARCHITECTURE, steps=200, batch_size=64, lr=1e-3, weight_decay=1e-4))  # 3.1 s a step
    mae: TeacherPlan = field(default_factory=lambda: TeacherPlan(
        MAE_ARCHITECTURE, steps=1250, batch_size=64, lr=1.5e-3, weight_decay=0.05, betas=(0.9, 0.95),
        checkpoint_every=250))  # 0.48 s a step
    bn_batches: int = 8  # fixed batches that the BatchNorm statistics are averaged over after training
    num_workers: int = 0  # speed only: not part of the fingerprint


PRESETS = {
    "cpu": Settings(),  # about 10 min per teacher on the 2-core CPU (step times in the comments above)
    "gpu": Settings(  # estimated for one H200, not measured: more steps, larger batches, more scenes
        num_scenes=65536, num_workers=8, bn_batches=16,
        simclrv2=TeacherPlan(SIMCLRV2_ARCHITECTURE, steps=6000, batch_size=256, lr=2e-3, weight_decay=1e-4,
                             checkpoint_every=500),
        mae=TeacherPlan(MAE_ARCHITECTURE, steps=8000, batch_size=256, lr=1.5e-3, weight_decay=0.05,
                        betas=(0.9, 0.95), checkpoint_every=1000)),
}


class SourceImages(ConcatDataset):
    """Images 3,S,S in [0, 1] of one or more UnlabelledSource datasets, end to end; EpochAware for the loop."""

    def set_epoch(self, epoch: int) -> None:
        for part in self.datasets:
            part.set_epoch(epoch)


def source_images(settings: Settings, kvasir_root: Path = KVASIR_ROOT, registry=None) -> tuple[Dataset, dict]:
    """(the source domain's images at settings.image_size, what they are: part of the fingerprint)."""
    registry = registry or default_registry()
    if settings.source not in SOURCES:
        raise SamoraError(f"source {settings.source!r}: expected one of {', '.join(SOURCES)}")
    parts, described = [], {}
    if settings.source in ("scenes", "both"):
        config = {"num_images": settings.num_scenes, "seed": settings.scenes_seed}
        parts.append(registry.get("dataset", "scenes").build(config).slice_dataset(settings.image_size))
        described["scenes"] = config
    if settings.source in ("kvasir_seg", "both"):
        kvasir = registry.get("dataset", "kvasir_seg")
        every = kvasir.build({"root": kvasir_root}).cases("train")
        test = set(json.loads((kvasir_root / "split.json").read_text())["test"])  # mini-SAM's held-out images
        kept = [case for case in every if case not in test]
        adapter = kvasir.build({"root": kvasir_root, "fit": "stretch", "train": {"cases": kept}})
        parts.append(adapter.slice_dataset(settings.image_size))
        described["kvasir_seg"] = {"images": len(kept), "fit": "stretch",
                                   "sha256sums": sha256_of(kvasir_root / "SHA256SUMS")}
    return SourceImages(parts), described


def architecture_of(key: str, settings: Settings) -> dict:
    plan: TeacherPlan = getattr(settings, key)
    return {**plan.architecture, "image_size": settings.image_size} if key == "mae" else dict(plan.architecture)


def official_layout(key: str, teacher: nn.Module) -> dict:
    """The teacher's weights wrapped and named as the real checkpoint files are."""
    def plain(state: dict) -> dict[str, torch.Tensor]:
        return {name: tensor.detach().cpu().clone() for name, tensor in state.items()}

    if key == "simclrv2":
        return {"resnet": plain(teacher.resnet.state_dict()), "head": plain(teacher.head.state_dict())}
    return {"model": plain({**teacher.vit.state_dict(), **teacher.decoder.state_dict()})}


def precise_batchnorm(objective: nn.Module, dataset: Dataset, batches: int, batch_size: int, seed: int,
                      device: torch.device) -> int:
    """BatchNorm running statistics recomputed as exact averages over `batches` fixed batches passed through
    the training objective (its views included); returns how many batches were used (0: no BatchNorm)."""
    norms = [m for m in objective.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or batches == 0:
        return 0
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    chunks = [order[i:i + batch_size] for i in range(0, batches * batch_size, batch_size)]
    chunks = [chunk for chunk in chunks if len(chunk) > 1]  # BatchNorm needs two samples
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    torch.manual_seed(seed)
    objective.train()
    with torch.no_grad():
        for chunk in chunks:
            objective(torch.stack([dataset[i] for i in chunk]).to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return len(chunks)


def first_logged_loss(run_dir: Path) -> float | None:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return json.loads(lines[0]).get("loss") if lines else None


def build_teacher(key: str, settings: Settings, out: Path, dataset: Dataset, data: dict, *, registry=None,
                  device: torch.device = torch.device("cpu"), show_progress: bool = True,
                  step_callbacks: Sequence[StepCallback] = ()) -> dict:
    """Train (or resume, or reuse) one mini-teacher in `out`, export it, check that the registry's loader
    gives it back bit for bit; return its record (out/<name>.json). The caller holds out's lock; the
    training loop calls `step_callbacks` after every step."""
    registry = registry or default_registry()
    name, stem = TEACHERS[key]
    plan: TeacherPlan = getattr(settings, key)
    architecture = architecture_of(key, settings)
    schedule = {k: v for k, v in dataclasses.asdict(plan).items() if k not in ("architecture", "checkpoint_every")}
    inputs = json.loads(json.dumps({  # as the record file will hold them (tuples become lists)
        "teacher": name, "architecture": architecture, "schedule": schedule, "image_size": settings.image_size,
        "source": settings.source, "data": data, "seed": settings.seed, "bn_batches": settings.bn_batches,
        "training_version": TRAINING_VERSION}))
    digest = fingerprint(inputs)
    record_path, pth, run_dir = out / f"{stem}.json", out / f"{stem}.pth", out / stem
    old = json.loads(record_path.read_text()) if record_path.is_file() else None
    if old is not None and old["fingerprint"] != digest:
        if old.get("status") == "done":
            raise SamoraError(f"{out} holds a {stem} of other settings (fingerprint {old['fingerprint']}, these "
                              f"{digest}); choose another --out or remove {record_path} and {pth}")
        print(f"{stem}: starting over; {out} held an unfinished run of other settings")
        old = None
    if old is not None and old.get("status") == "done" and pth.is_file() and sha256_of(pth) == old["sha256"]:
        print(f"{stem}: reusing {pth} (fingerprint {digest})")
        return old
    resume = old is not None and (run_dir / STATE_FILE).is_file()
    start = read_header(run_dir / STATE_FILE)["step"] if resume else 0
    record = {**inputs, "fingerprint": digest, "status": "training"}
    atomic_write_text(record_path, json.dumps(record, indent=1))

    seed_everything(settings.seed)
    teacher = registry.get("teacher", name).build(architecture)
    objective = teacher.cpt_objective()
    train_cfg = TrainSection(epochs=-(-plan.steps * plan.batch_size // len(dataset)), batch_size=plan.batch_size,
                             lr=plan.lr, weight_decay=plan.weight_decay, betas=plan.betas, warmup=plan.warmup,
                             schedule="cosine", max_steps=plan.steps, checkpoint_every=plan.checkpoint_every,
                             log_every=10, num_workers=settings.num_workers)
    started = time.perf_counter()
    result = train(objective, dataset, train_cfg, settings.seed, run_dir, DistContext(device=device), resume,
                   {"stage": f"world-teacher-{stem}"}, show_progress, step_callbacks=step_callbacks)
    seconds = time.perf_counter() - started
    bn = precise_batchnorm(objective, dataset, settings.bn_batches, plan.batch_size, settings.seed, device)
    teacher.cpu().freeze()
    layout = official_layout(key, teacher)
    atomic_write(pth, lambda tmp: torch.save(layout, tmp))
    reloaded = registry.get("teacher", name).build({**architecture, "checkpoint": pth}).cpt_tensors()
    differing = [k for k, v in teacher.cpt_tensors().items() if not torch.equal(reloaded[k], v)]
    if differing:
        raise SamoraError(f"{pth}: the teacher loader reads {differing[0]} (and {len(differing) - 1} more) "
                          "back differently from what was trained")
    record |= {"status": "done", "steps": result.steps, "first_loss": first_logged_loss(run_dir),
               "final_loss": result.final_loss, "resumed_at": start if resume else None,
               "train_seconds": round(seconds, 1), "seconds_per_step": round(seconds / max(result.steps - start, 1), 3),
               "precise_bn_batches": bn, "device": str(device), "sha256": sha256_of(pth), "pth": pth.name,
               "parameters": sum(v.numel() for v in teacher.parameters()),
               "recipe_teacher": {"name": name, **architecture}}
    atomic_write_text(record_path, json.dumps(record, indent=1))
    print(f"{stem}: {result.steps - start} steps in {seconds:.0f} s, loss {record['first_loss']:.4f} at step 1, "
          f"{result.final_loss:.4f} at step {result.steps}; {pth}")
    return record


def build_teachers(settings: Settings, out: Path, keys: list[str] | tuple[str, ...] = tuple(TEACHERS), *,
                   kvasir_root: Path = KVASIR_ROOT, device: torch.device = torch.device("cpu"),
                   show_progress: bool = True, step_callbacks: Sequence[StepCallback] = ()) -> dict[str, dict]:
    """Every teacher named in `keys`, in `out` (locked while it runs); returns {key: record}."""
    registry = default_registry()
    dataset, data = source_images(settings, kvasir_root, registry)
    with run_folder_lock(out):
        return {key: build_teacher(key, settings, out, dataset, data, registry=registry, device=device,
                                   show_progress=show_progress, step_callbacks=step_callbacks) for key in keys}


def parse_args(argv: list[str]) -> tuple[Settings, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for simclrv2_mini.pth, mae_mini.pth, "
                   "their .json and runs")
    add_common_flags(p, PRESETS, SOURCES, KVASIR_ROOT)
    p.add_argument("--image-size", type=int, help="the target SAM's image size (the MAE's token grid must match)")
    p.add_argument("--steps", type=int, help="every teacher's optimizer steps (smoke runs)")
    p.add_argument("--teachers", nargs="+", choices=sorted(TEACHERS), default=list(TEACHERS))
    args = p.parse_args(argv)
    settings = preset_with_flags(PRESETS, args)
    patch = settings.mae.architecture["patch_size"]
    if settings.image_size % patch:
        p.error(f"--image-size {settings.image_size}: the MAE teacher needs a multiple of its {patch}-px patches")
    if args.steps is not None:
        settings = dataclasses.replace(settings, **{key: dataclasses.replace(getattr(settings, key), steps=args.steps)
                                                    for key in TEACHERS})
    return settings, args


def main(argv: list[str] | None = None) -> int:
    from samora_kit.api import resolve_device

    settings, args = parse_args(sys.argv[1:] if argv is None else argv)

    def build() -> None:
        records = build_teachers(settings, args.out, args.teachers, kvasir_root=args.kvasir_root,
                                 device=resolve_device(args.device))
        for record in records.values():
            print(json.dumps({k: record.get(k) for k in ("pth", "fingerprint", "steps", "first_loss", "final_loss",
                                                          "train_seconds", "seconds_per_step", "recipe_teacher")}))

    return exit_code(build)


if __name__ == "__main__":
    sys.exit(main())
