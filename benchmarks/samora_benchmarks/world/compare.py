"""Two builds of the miniature world, side by side: how far apart are the weights each stage wrote, and
the figures world.json records for them? CPU training reduces in a thread-dependent order, so two builds
agree to float rounding at best, not bit for bit; this says how close they are. Where both builds ran
few-shot arms (`python -m samora_benchmarks.fewshot --world-root`), each arm's Dice on the draws both ran is set side by
side too, paired by draw (same support set, same seed): how much a rebuild of the world moves the result.

    python -m samora_benchmarks.world.compare runs/world runs/world-rebuild --docs-block world-rebuild
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from samora_kit.api import SamoraError

from samora_benchmarks.common import paired_difference, shown
from samora_benchmarks.world.build import TARGETS, World
from samora_benchmarks.world.cli import command_line, exit_code, print_and_document


def weight_files(root: Path) -> list[str]:
    """Every safetensors file a stage of the world at `root` wrote, relative to `root` (the teachers are
    .pth in their official layouts, so their recorded losses stand for them)."""
    patterns = ("source_mae/base.safetensors", "mini_sam/*.safetensors", "stage1_*/experts/*.safetensors")
    return sorted(str(p.relative_to(root)) for pattern in patterns for p in root.glob(pattern))


def weight_distance(a: Path, b: Path) -> tuple[float, float]:
    """The largest absolute difference over every tensor of two safetensors files, and ‖a − b‖ / ‖a‖
    over all of them together."""
    first, second = load_file(a), load_file(b)
    if first.keys() != second.keys():
        raise SamoraError(f"{a} and {b} hold different tensors: "
                          f"{sorted(first.keys() ^ second.keys())[:5]} are in one only")
    largest, diff_sq, norm_sq = 0.0, 0.0, 0.0
    for key, x in first.items():
        x, y = x.double(), second[key].double()
        if x.shape != y.shape:
            raise SamoraError(f"{key} is {tuple(x.shape)} in {a} but {tuple(y.shape)} in {b}")
        largest = max(largest, (x - y).abs().max().item() if x.numel() else 0.0)
        diff_sq += torch.sum((x - y) ** 2).item()
        norm_sq += torch.sum(x ** 2).item()
    return largest, (diff_sq / norm_sq) ** 0.5 if norm_sq else 0.0


def recorded_figures(stages: dict) -> dict[str, float]:
    """The figures world.json holds for what a stage made: mini-SAM's held-out mIoU, the teachers' losses."""
    figures = {}
    for source, after in stages.get("mini_sam", {}).get("held_out_after", {}).items():
        figures[f"mini_sam box mIoU, {source}"] = after["box_miou"]
        figures[f"mini_sam one-point mIoU, {source}"] = after["point_miou"]
    for name, teacher in stages.get("teachers", {}).items():
        if isinstance(teacher, dict) and "final_loss" in teacher:
            figures[f"{name} teacher final loss"] = teacher["final_loss"]
    return figures


def _stages(root: Path) -> dict:
    world = World(root)
    if not world.path.is_file():
        raise SamoraError(f"{world.path} does not exist: build that world first (python -m samora_benchmarks.world.build "
                          f"--root {root})")
    return world.record["stages"]


def compare_table(first: Path, second: Path) -> str:
    """The markdown comparison of the worlds at `first` and `second`."""
    figures_a, figures_b = recorded_figures(_stages(first)), recorded_figures(_stages(second))
    names = [name for name in weight_files(first) if (second / name).is_file()]
    if not names:
        raise SamoraError(f"{first} and {second} have no weight file in common")
    lines = ["| weights | largest abs difference | ‖a − b‖ / ‖a‖ |", "|---|---|---|"]
    for name in names:
        largest, relative = weight_distance(first / name, second / name)
        lines.append(f"| {name} | {largest:.2e} | {relative:.2e} |")
    lines += ["", f"| figure | {shown(first)} | {shown(second)} |", "|---|---|---|"]
    lines += [f"| {key} | {figures_a[key]:.3f} | {figures_b[key]:.3f} |" for key in figures_a if key in figures_b]
    return "\n".join(lines) + "\n"


RUN_FOLDER = re.compile(r"(?P<arm>.+)-k(?P<k>\d+)-d(?P<draw>\d+)")  # benchmarks/samora_benchmarks/fewshot.py's ARM-kK-dD


def fewshot_dice(root: Path, target: str) -> dict[tuple[str, int], dict[int, float]]:
    """(arm, k) -> draw -> mean Dice % (transunet policy) of every finished few-shot run of the build at
    `root` on `target` (ROOT/fewshot-<target>/ARM-kK-dD/eval/summary.json)."""
    found: dict[tuple[str, int], dict[int, float]] = {}
    for summary in sorted((root / f"fewshot-{target}").glob("*/eval/summary.json")):
        match = RUN_FOLDER.fullmatch(summary.parent.parent.name)
        if match:
            dice = json.loads(summary.read_text())["transunet"]["mean"]["dice"] * 100
            found.setdefault((match["arm"], int(match["k"])), {})[int(match["draw"])] = dice
    return found


def fewshot_table(first: Path, second: Path) -> str:
    """Per target, arm and k: mean Dice in each build over the draws both ran, and the second minus the
    first paired by draw with its 95 % t-interval; empty when no arm ran in both."""
    lines = []
    for target in TARGETS:
        dice_a, dice_b = fewshot_dice(first, target), fewshot_dice(second, target)
        for (arm, k), draws_a in dice_a.items():
            draws = sorted(set(draws_a) & set(dice_b.get((arm, k), {})))
            if not draws:
                continue
            a, b = [draws_a[d] for d in draws], [dice_b[(arm, k)][d] for d in draws]
            mean, low, high = paired_difference(b, a)
            lines.append(f"| {target} | {arm} | {k} | {len(draws)} | {sum(a) / len(a):.1f} | {sum(b) / len(b):.1f} | "
                         f"{mean:+.1f} [{low:+.1f}, {high:+.1f}] |")
    if not lines:
        return ""
    return "\n".join(["", "Few-shot arms run on both builds, paired by draw (mean Dice %, transunet policy):", "",
                      f"| target | arm | k | draws | {shown(first)} | {shown(second)} | second − first [95 % CI] |",
                      "|---|---|---|---|---|---|---|", *lines]) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("first", type=Path)
    p.add_argument("second", type=Path)
    p.add_argument("--docs-block", help="also write the tables between <!-- NAME:start/end --> of "
                   "docs/benchmarks.md")
    args = p.parse_args(argv)

    def compare() -> None:
        first, second = args.first.resolve(), args.second.resolve()
        command = command_line("samora_benchmarks.world.compare", argv)
        print_and_document(f"Command: `{command}`.\n\n" + compare_table(first, second) + fewshot_table(first, second),
                           args.docs_block)

    return exit_code(compare)


if __name__ == "__main__":
    sys.exit(main())
