"""The one place a pickle is read: an official `.pth` checkpoint, with `weights_only=True`."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

from ..errors import CheckpointError


def load_pth_state_dict(path: Path, expected: str) -> dict:
    """The state dict in a PyTorch checkpoint (unwrapped from {"model": ...} or {"state_dict": ...}).
    Only tensors and plain containers are unpickled; anything else is refused, naming the file."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file; expected {expected}")
    try:
        with warnings.catch_warnings():  # torch's notes on the pickle (its protocol, ...) would precede our verdict
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and format errors all mean "not a weights-only checkpoint"
        raise CheckpointError(f"{path}: cannot be loaded as a weights-only PyTorch checkpoint "
                              f"({_reason(exc)}); expected {expected}") from None
    for nest in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(nest), dict):
            obj = obj[nest]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, expected {expected}")
    return obj


def _reason(exc: Exception) -> str:
    message = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    # torch has written "Unsupported global: GLOBAL os.system" and "unsupported GLOBAL posix.system"
    refused = re.search(r"unsupported global(?::?\s*(?:GLOBAL\s+)?([\w.]+))?", message, re.IGNORECASE)
    if refused:
        what = f" ({refused.group(1)})" if refused.group(1) else ""
        return (f"refused: it pickles a Python object{what} other than tensors and containers, which would run "
                "code when loaded")
    return f"not a PyTorch checkpoint, or a corrupted one: {type(exc).__name__}"
