"""What every flow shares: the session it runs in, the run folder and its owner, seeding."""

from __future__ import annotations

import hashlib
import json
import random
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel
from rich.console import Console

from ..plugins import LoadedPlugins
from ..train.distributed import DistContext
from ..train.lock import run_folder_lock
from ..train.runfolder import environment, write_run_files


@dataclass
class Session:
    """Where a flow runs: the plugins, this process's place among the ranks, the command line."""

    plugins: LoadedPlugins
    ctx: DistContext
    argv: list[str]
    console: Console
    show_progress: bool = True

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
