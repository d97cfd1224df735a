"""Two builds of the miniature world, side by side: how far apart are the weights each stage wrote, and
the figures world.json records for them? CPU training reduces in a thread-dependent order, so two builds
agree to float rounding at best, not bit for bit; this says how close they are.

    python -m benchmarks.world.compare runs/world runs/world-rebuild --docs-block world-rebuild
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from samora_kit.errors import SamoraError

from benchmarks.world.build import World, shown
from benchmarks.world.cli import command_line, exit_code, print_and_document


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
        raise SamoraError(f"{world.path} does not exist: build that world first (python -m benchmarks.world.build "
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("first", type=Path)
    p.add_argument("second", type=Path)
    p.add_argument("--docs-block", help="also write the tables between <!-- NAME:start/end --> of "
                   "docs/benchmarks.md")
    args = p.parse_args(argv)

    def compare() -> None:
        first, second = args.first.resolve(), args.second.resolve()
        command = command_line("benchmarks.world.compare", argv)
        print_and_document(f"Command: `{command}`.\n\n" + compare_table(first, second), args.docs_block)

    return exit_code(compare)


if __name__ == "__main__":
    sys.exit(main())
