"""Everything a run leaves behind, in one folder: recipe, environment, command line."""

from __future__ import annotations

import json
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from .. import __version__
from ..weights.io import atomic_write_text

RECIPE_FILE = "recipe.resolved.toml"
STATE_FILE = "checkpoints/last.safetensors"
WEIGHTS_FILE = "weights.safetensors"
METRICS_FILE = "metrics.jsonl"


def environment(device: torch.device, plugin_sources: dict[str, str]) -> dict:
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "samora_kit": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "git_sha": _git_sha(),
        "plugins": plugin_sources,
    }


def write_run_files(run_dir: Path, resolved_recipe: str, env: dict, argv: list[str]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / RECIPE_FILE, resolved_recipe)
    atomic_write_text(run_dir / "env.json", json.dumps(env, indent=2) + "\n")
    atomic_write_text(run_dir / "cmdline.txt", shlex.join(argv) + "\n")


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None
