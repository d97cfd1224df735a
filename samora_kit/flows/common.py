"""What every flow shares: the session it runs in, the run folder (its owner, and what it already
holds), seeding."""

from __future__ import annotations

import hashlib
import json
import random
import tomllib
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel
from rich.console import Console

from ..errors import SamoraError
from ..plugins import LoadedPlugins
from ..train.distributed import DistContext
from ..train.loop import StepCallback
from ..train.lock import run_folder_lock
from ..train.runfolder import RECIPE_FILE, STATE_FILE, environment, write_run_files


@dataclass
class Session:
    """Where a flow runs: the plugins, this process's place among the ranks, the command line, and what
    every training loop of the run calls after each step (samora_kit.train.loop.train's step_callbacks)."""

    plugins: LoadedPlugins
    ctx: DistContext
    argv: list[str]
    console: Console
    show_progress: bool = True
    step_callbacks: tuple[StepCallback, ...] = ()

    @property
    def registry(self):
        return self.plugins.registry

    def owned(self, run_dir: Path):
        """The run folder's lock, held by the main process (the other ranks write nothing there)."""
        return run_folder_lock(run_dir) if self.ctx.is_main else nullcontext()

    def write_run_files(self, run_dir: Path, resolved: str) -> None:
        if self.ctx.is_main:
            write_run_files(run_dir, resolved, environment(self.ctx.device, self.plugins.sources), self.argv)


def run_dir_of(recipe) -> Path:
    return Path(recipe.run.output_dir) if recipe.run.output_dir else Path("runs") / recipe.run.name


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fingerprint(*parts: BaseModel | dict | list | str) -> str:
    """A short hash of recipe parts: equal hashes mean an artefact can be reused."""
    plain = [p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts]
    return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:16]


def prior_run(run_dir: Path, resolved: str, resume: bool, finished_file: str) -> str:
    """What the run folder holds for this recipe (its resolved TOML): "new" (train from the start),
    "resume" (continue its training state) or "trained" (`finished_file` is there: nothing is left to
    train, whether or not --resume asks). Refuses a run of another recipe (naming each key that differs),
    a plain `run` on an unfinished run, and --resume with no training state."""
    saved, state = run_dir / RECIPE_FILE, run_dir / STATE_FILE
    trained = (run_dir / finished_file).exists()
    if (trained or state.exists()) and saved.is_file():
        differences = recipe_differences(saved.read_text(), resolved)
        if differences:
            listing = "".join(f"\n  - {line}" for line in differences)
            if resume:
                raise SamoraError(f"--resume: the recipe differs from {saved} in {len(differences)} key(s):{listing}"
                                  "\nresume with the same recipe and overrides, or start a new run.output_dir")
            raise SamoraError(f"{run_dir} already holds a run of another recipe; {len(differences)} key(s) differ "
                              f"from {saved}:{listing}\nrerun with the recipe and overrides that made it, or set "
                              "run.output_dir=... (or run.name=...) for a new run")
    if trained:
        return "trained"
    if resume:
        if not state.exists():
            raise SamoraError(f"--resume: {state} does not exist; nothing to resume: the run stopped before its "
                              "first checkpoint (or never started), and `run` without --resume starts it")
        return "resume"
    if state.exists():
        raise SamoraError(f"{run_dir} already holds an unfinished run; pass --resume to continue it, or set "
                          "run.output_dir=... (or run.name=...) for a new one")
    return "new"


def recipe_differences(saved: str, resolved: str) -> list[str]:
    """'key.path: VALUE in the run folder, VALUE in this recipe' for each key whose value differs
    between two resolved recipes (TOML); [] when they are the same."""
    try:
        before = dict(_leaves(tomllib.loads(saved)))
    except tomllib.TOMLDecodeError as exc:
        return [f"(the run folder's recipe is not valid TOML: {exc})"]
    now = dict(_leaves(tomllib.loads(resolved)))
    keys = list(before) + [k for k in now if k not in before]
    return [f"{key}: {_shown(before, key)} in the run folder, {_shown(now, key)} in this recipe"
            for key in keys if before.get(key, _UNSET) != now.get(key, _UNSET)]


_UNSET = object()


def _leaves(node, prefix: str = ""):
    """(dotted key, value) of every value in a recipe; list entries that are tables by their index."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}{key}.")
    elif isinstance(node, list) and node and all(isinstance(item, dict) for item in node):
        for i, item in enumerate(node):
            yield from _leaves(item, f"{prefix}{i}.")
    else:
        yield prefix[:-1], node


def _shown(values: dict, key: str) -> str:
    """A value as a recipe (or an override) writes it; 'not set' when absent."""
    if key not in values:
        return "not set"
    return json.dumps(values[key], ensure_ascii=False)  # scalars and lists of them: TOML's own spelling
