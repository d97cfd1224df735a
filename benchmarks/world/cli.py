"""What the world's build scripts share on the command line: a preset adjusted by the flags given, and
a SamoraError turned into one line on stderr and exit status 1."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Callable, TypeVar

from samora_kit.errors import SamoraError

S = TypeVar("S")


def add_common_flags(parser: argparse.ArgumentParser, presets: dict, sources: tuple[str, ...],
                     kvasir_root: Path) -> None:
    """The flags every source-domain script takes: the preset, the source images, seeds, workers, device."""
    parser.add_argument("--scale", choices=sorted(presets), default="cpu", help="the preset the flags below adjust")
    parser.add_argument("--source", choices=sources)
    parser.add_argument("--num-scenes", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--num-workers", type=int)
    parser.add_argument("--kvasir-root", type=Path, default=kvasir_root)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def preset_with_flags(presets: dict[str, S], args: argparse.Namespace) -> S:
    """`presets[args.scale]` with every dataclass field that a flag of the same name set (None: not given)."""
    preset = presets[args.scale]
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(preset)
             if getattr(args, f.name, None) is not None}
    return dataclasses.replace(preset, **given)


def exit_code(work: Callable[[], None]) -> int:
    """Run `work`; 0 when it finishes, 1 with "error: ..." on stderr when it raises a SamoraError."""
    try:
        work()
    except SamoraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
