"""What the world's build scripts share on the command line: a preset adjusted by the flags given, and
a SamoraError turned into one line on stderr and exit status 1."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Callable, TypeVar

from samora_kit.api import SamoraError

from samora_benchmarks.common import REPO, write_doc_block

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


def command_line(module: str, argv: list[str] | None) -> str:
    """How the docs give this run: `python -m MODULE` with the arguments it was given."""
    return shlex.join(["python", "-m", module, *(argv or sys.argv[1:])])


def print_and_document(text: str, docs_block: str | None) -> None:
    """Print `text`, and put it between <!-- DOCS_BLOCK:start/end --> of docs/benchmarks.md when one is named."""
    print(text)
    if docs_block:
        write_doc_block(REPO / "docs" / "benchmarks.md", docs_block, text)
