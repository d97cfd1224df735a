"""One flow per recipe task: `segment`, `pretrain_experts`, `pretrain_base`. Each takes a validated
recipe of its task and a Session, and returns the run folder. runner.run picks one by `task`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .common import Session
from .pretrain_base import run_pretrain_base
from .pretrain_experts import run_pretrain_experts
from .segment import run_segment

FLOWS: dict[str, Callable[..., Path]] = {
    "segment": run_segment,
    "pretrain_experts": run_pretrain_experts,
    "pretrain_base": run_pretrain_base,
}

__all__ = ["FLOWS", "Session"]
