"""Read a teacher's weights file (safetensors, or a weights-only `.pth`) and check it against the model."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from samora_kit.api import CheckpointError, load_pth_state_dict, load_weights

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
OPTIONAL_BUFFERS = ("num_batches_tracked",)  # BatchNorm counters: absent from some conversions, never used


def read_teacher_checkpoint(path: str | Path, expected: str) -> dict[str, torch.Tensor]:
    """Flat `name -> tensor` dict from `path`. `.safetensors` goes through samora_kit.weights.io; a pickled
    `.pth`/`.pt` is read with `torch.load(weights_only=True)` (never arbitrary pickles), unwrapped from
    `{"model": ...}` / `{"state_dict": ...}`, and nested dicts are flattened with dotted prefixes
    (`{"resnet": {...}, "head": {...}}` -> `resnet.*`, `head.*`). `expected` says what the file should be."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such teacher checkpoint; expected {expected}")
    if path.suffix == ".safetensors":
        tensors, _ = load_weights(path)
        return tensors
    if path.suffix not in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path}: unknown checkpoint suffix {path.suffix!r}; use .safetensors or "
                              f"{'/'.join(PICKLE_SUFFIXES)} (a PyTorch state dict); expected {expected}")
    obj = load_pth_state_dict(path, expected)
    flat: dict[str, torch.Tensor] = {}
    _flatten(obj, "", flat, path, expected)
    return flat


def _flatten(obj: dict, prefix: str, out: dict, path: Path, expected: str) -> None:
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            _flatten(value, f"{name}.", out, path, expected)
        elif isinstance(value, torch.Tensor):
            out[name] = value
        else:
            raise CheckpointError(f"{path}: {name} is a {type(value).__name__}, not a tensor; expected {expected}")


def check_state(found: dict[str, torch.Tensor], own: dict[str, torch.Tensor], path: Path, expected: str,
                *, fit: Callable[[str, torch.Tensor, torch.Size], torch.Tensor | None] | None = None,
                ignore: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """Return `found` restricted to `own`'s keys, cast to `own`'s dtypes. The first missing, unexpected or
    wrongly shaped key (sorted order) raises CheckpointError naming the file and the key. `fit(key, tensor,
    wanted_shape)` may return a resized tensor (position embeddings); keys starting with an `ignore` prefix
    are dropped silently."""
    ignore = tuple(ignore)
    found = {k: v for k, v in found.items() if not k.startswith(ignore)}
    fitted = {}
    for key in sorted(set(own) | set(found)):
        if key not in found:
            if key.endswith(OPTIONAL_BUFFERS):
                continue
            raise CheckpointError(f"{path}: missing {key} (expected shape {tuple(own[key].shape)}); "
                                  f"expected {expected}")
        if key not in own:
            raise CheckpointError(f"{path}: unexpected {key} (shape {tuple(found[key].shape)}); "
                                  f"expected {expected}")
        tensor, want = found[key], own[key].shape
        if tensor.shape != want and fit is not None:
            tensor = fit(key, tensor, want)
            tensor = found[key] if tensor is None else tensor
        if tensor.shape != want:
            raise CheckpointError(f"{path}: {key} has shape {tuple(found[key].shape)}, expected {tuple(want)}; "
                                  f"the file is another architecture or size than configured ({expected})")
        fitted[key] = tensor.to(own[key].dtype)
    return fitted
