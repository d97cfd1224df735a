"""One command builds the miniature of SAMora's world (issue 11, point 4), from random weights to the
stage-1 experts of each target, every artefact cached with what made it:

    python -m samora_benchmarks.world.build                                   # CPU preset (times: docs/benchmarks.md)
    python -m samora_benchmarks.world.build --targets hippocampus             # one target's stage 1 only
    python -m samora_benchmarks.world.build --scale gpu --root runs/world-gpu # the larger world, on a GPU

Stages, in order, each in ROOT/<stage>:
1. source_mae      benchmarks/recipes/world/source_mae.toml: MAE pre-training of a tiny SAM encoder on the source scenes;
2. mini_sam        benchmarks/samora_benchmarks/world/mini_sam.py: SAM's promptable training on the source instances, exported
                   as an official .pth and imported by `samora-kit weights import`;
3. teachers        benchmarks/samora_benchmarks/world/teachers.py: the mini SimCLRv2 ResNet and MAE ViT, official layouts;
4. stage1_<target> benchmarks/recipes/world/stage1_<target>.toml: CPT of each teacher on the target's unlabelled pool,
                   distillation into the image and patch experts, the denoising pixel expert.
ROOT/world.json records each stage's fingerprint (its settings and the sha256 of what it read), wall
seconds and key figures. A rerun reuses every stage whose fingerprint is unchanged; a stage whose inputs
changed is rebuilt from scratch (its old folder moved aside to <stage>.stale-<fingerprint>, never deleted),
and the stages that read its files follow, since their fingerprints hold those files' sha256. Nothing here is committed: ROOT lives under runs/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from samora_kit.api import (atomic_write_text, default_registry, fingerprint, load_recipe, resolve_device, run,
                            sha256_of)

from samora_benchmarks.common import RECIPES as PACKAGE_RECIPES, REPO, shown
from samora_benchmarks.world import mini_sam, teachers
from samora_benchmarks.world.cli import command_line, exit_code, print_and_document

RECIPES = PACKAGE_RECIPES / "world"
DEFAULT_ROOT = REPO / "runs" / "world"  # the build benchmarks/recipes/world/*.toml name
TARGETS = ("hippocampus", "acdc")
RECORD = "world.json"


@dataclass(frozen=True)
class Scale:
    """What one flag changes: the overrides of the two recipes and the two scripts' settings."""

    source_mae: tuple[str, ...]
    mini_sam: mini_sam.Settings
    teachers: teachers.Settings
    stage1: tuple[str, ...]


SCALES = {
    "cpu": Scale(source_mae=(), mini_sam=mini_sam.PRESETS["cpu"], teachers=teachers.PRESETS["cpu"], stage1=()),
    "gpu": Scale(source_mae=("data.num_images=65536", "train.batch_size=256", "train.num_workers=8"),
                 mini_sam=mini_sam.PRESETS["gpu"], teachers=teachers.PRESETS["gpu"],
                 stage1=("train.epochs=3", "train.batch_size=64", "train.num_workers=8")),
}


def mini_sam_file(root: Path) -> Path:
    """The mini-SAM that the world at ROOT imported (what its arms and stage 1 load)."""
    return root / "mini_sam" / mini_sam.SAFETENSORS


def teacher_file(root: Path, teacher: str) -> Path:
    """The world at ROOT's mini-teacher `teacher` (simclrv2 or mae) in its official layout."""
    return root / "teachers" / f"{teachers.TEACHERS[teacher][1]}.pth"


def stage1_folder(root: Path, target: str) -> Path:
    """The run folder of the world at ROOT's stage 1 on `target` (its experts, its resolved recipe)."""
    return root / f"stage1_{target}"


def stage1_overrides(root: Path, scale: Scale, target: str) -> list[str]:
    """The stage-1 recipe pointed at ROOT's mini-SAM and teachers, its run in ROOT/stage1_<target>."""
    return [f"run.output_dir={stage1_folder(root, target)}",
            f"backbone.checkpoint={mini_sam_file(root)}",
            f"experts.0.teacher.checkpoint={teacher_file(root, 'simclrv2')}",
            f"experts.1.teacher.checkpoint={teacher_file(root, 'mae')}", *scale.stage1]


class World:
    """ROOT and its world.json: which stage was built from what, and how long it took."""

    def __init__(self, root: Path):
        self.root = root
        self.path = root / RECORD
        self.record = json.loads(self.path.read_text()) if self.path.is_file() else {"stages": {}}

    def stage(self, name: str, inputs: dict, build) -> dict:
        """Reuse stage `name` when it finished with these inputs before, else build it (`build` gets its
        folder and returns its figures) and record it. Inputs hold the sha256 of every file the stage
        reads, so a rebuilt stage makes the stages after it rebuild too."""
        inputs = json.loads(json.dumps(inputs))  # as world.json will hold them (tuples become lists)
        digest = fingerprint(inputs)
        folder = self.root / name
        old = self.record["stages"].get(name)
        if old is not None and old["fingerprint"] == digest and old.get("status") == "done":
            print(f"world: {name} reused ({digest})")
            return old
        if old is not None and folder.exists():
            stale = folder.with_name(f"{name}.stale-{old['fingerprint']}")
            shutil.rmtree(stale, ignore_errors=True)
            folder.rename(stale)
            print(f"world: {name} has new inputs; the old one moved to {stale}")
        print(f"world: building {name} ({digest})")
        started = time.perf_counter()
        figures = build(folder)
        entry = json.loads(json.dumps({"fingerprint": digest, "status": "done", "inputs": inputs,
                                       "wall_s": round(time.perf_counter() - started, 1), **figures}))
        self.record["stages"][name] = entry
        self.save()
        return entry

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(self.record, indent=1))


def recipe_inputs(path: Path, overrides: list[str], **files: Path) -> dict:
    """A recipe's fingerprinted inputs: the resolved recipe minus where its run goes, and the files' sha256."""
    recipe = load_recipe(path, default_registry(), overrides)
    resolved = recipe.model_dump(mode="json")
    resolved["run"].pop("output_dir", None)
    resolved.get("backbone", {}).pop("checkpoint", None)  # the file's content counts, not its path
    for expert in resolved.get("experts", []):
        (expert.get("teacher") or {}).pop("checkpoint", None)
    return {"recipe": str(path.relative_to(REPO)), "resolved": resolved,
            "files": {name: sha256_of(file) for name, file in files.items()}}


def build_world(root: Path, scale: Scale, targets: list[str], device: str = "auto", scale_name: str = "") -> dict:
    """Build (or reuse) every stage of the world at `scale` in `root`; returns world.json's record."""
    world = World(root)
    world.record["scale"] = scale_name

    source_recipe = RECIPES / "source_mae.toml"
    source_overrides = [f"run.output_dir={root / 'source_mae'}", f"run.device={device}", *scale.source_mae]

    def source_mae(folder: Path) -> dict:
        run(source_recipe, source_overrides, False, ["python -m samora_benchmarks.world.build", str(source_recipe)])
        return {"sha256": sha256_of(folder / "base.safetensors")}

    world.stage("source_mae", recipe_inputs(source_recipe, source_overrides), source_mae)
    encoder = root / "source_mae" / "base.safetensors"

    sam_settings = scale.mini_sam

    def promptable(folder: Path) -> dict:
        record = mini_sam.build_mini_sam(sam_settings, encoder, folder, device=resolve_device(device))
        return {key: record[key] for key in ("sha256", "steps", "train_seconds", "resumed", "held_out_before",
                                             "held_out_after")}

    world.stage("mini_sam", {"settings": asdict(sam_settings), "encoder": sha256_of(encoder),
                             "version": mini_sam.TRAINING_VERSION}, promptable)

    teacher_settings = scale.teachers

    def mini_teachers(folder: Path) -> dict:
        records = teachers.build_teachers(teacher_settings, folder, device=resolve_device(device))
        return {key: {k: r[k] for k in ("sha256", "steps", "first_loss", "final_loss", "train_seconds")}
                for key, r in records.items()}

    world.stage("teachers", {"settings": asdict(teacher_settings), "version": teachers.TRAINING_VERSION},
                mini_teachers)

    for target in targets:
        recipe = RECIPES / f"stage1_{target}.toml"
        overrides = [*stage1_overrides(root, scale, target), f"run.device={device}"]
        files = {"mini_sam": mini_sam_file(root), **{name: teacher_file(root, name) for name in ("simclrv2", "mae")}}

        def stage1(folder: Path, recipe=recipe, overrides=overrides) -> dict:
            run(recipe, overrides, False, ["python -m samora_benchmarks.world.build", str(recipe)])
            experts = sorted((folder / "experts").glob("*.safetensors"))
            return {"experts": [p.name for p in experts], "expert_sha256": {p.stem: sha256_of(p) for p in experts}}

        world.stage(f"stage1_{target}", recipe_inputs(recipe, overrides, **files), stage1)
    world.save()
    return world.record


def world_table(record: dict, command: str, root: Path) -> str:
    """world.json as the markdown docs/benchmarks.md shows: each stage, its wall time, the sha256 of what it
    wrote (so two builds can be compared) and its key figures, then the whole build's wall time."""
    stages = record["stages"]
    lines = [f"Command: `{command}` (scale `{record.get('scale')}`; `{shown(root / RECORD)}` holds every figure).", "",
             "| stage | wall s when built | sha256 of what it wrote (first 12) | what it gives |", "|---|---|---|---|"]
    for name, stage in stages.items():
        lines.append(f"| {name} | {stage['wall_s']:.0f} | {_digests(stage)} | {_figures(name, stage)} |")
    total = sum(stage["wall_s"] for stage in stages.values())
    lines.append(f"| **all stages** | **{total:.0f}** ({total / 60:.0f} min) | | |")
    return "\n".join(lines) + "\n"


def _digests(stage: dict) -> str:
    if "sha256" in stage:
        return stage["sha256"][:12]
    named = stage.get("expert_sha256") or {key: t["sha256"] for key, t in stage.items()
                                           if isinstance(t, dict) and "sha256" in t}
    return ", ".join(f"{name} {digest[:12]}" for name, digest in named.items()) or "not recorded"


def _figures(name: str, stage: dict) -> str:
    if name == "mini_sam":
        after, before = stage["held_out_after"], stage["held_out_before"]
        return "held-out mIoU, box / one point (before training): " + "; ".join(
            f"{source} {a['box_miou']:.3f} / {a['point_miou']:.3f} ({before[source]['box_miou']:.3f} / "
            f"{before[source]['point_miou']:.3f})" for source, a in after.items()) + \
            f"; {stage['steps']} steps, {stage['train_seconds']:.0f} s of training" + \
            (" (resumed: this process's part only)" if stage.get("resumed") else "")
    if name == "teachers":
        return "; ".join(f"{key}: loss {t['first_loss']:.3f} → {t['final_loss']:.3f} in {t['steps']} steps, "
                         f"{t['train_seconds']:.0f} s"
                         for key, t in stage.items() if isinstance(t, dict) and "final_loss" in t)
    if name.startswith("stage1_"):
        return "experts " + ", ".join(stage["experts"])
    return "the tiny SAM encoder, MAE-pre-trained on the source images"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="where the world's stages go")
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    p.add_argument("--targets", nargs="*", choices=TARGETS, default=list(TARGETS),
                   help="the targets whose stage 1 to build (none: only the source-domain stages)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--docs-block", help="also write the stage table between <!-- NAME:start/end --> of "
                   "docs/benchmarks.md")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)

    def build() -> None:
        record = build_world(args.root.resolve(), SCALES[args.scale], args.targets, args.device, args.scale)
        print_and_document(world_table(record, command_line("samora_benchmarks.world.build", argv), args.root.resolve()),
                           args.docs_block)

    return exit_code(build)


if __name__ == "__main__":
    sys.exit(main())
