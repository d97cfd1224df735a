"""Weights files that travel with a sha256 sidecar (`<file>.sha256`, sha256sum's format): written
together, and read back only after the digest (given, else the sidecar's) matches the file."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CheckpointError
from .io import atomic_write_text, load_weights, save_weights, sha256_of, verify_sha256


def save_checksummed(out: Path, tensors: dict[str, torch.Tensor], header: dict) -> tuple[Path, str]:
    """Write tensors as safetensors with `header`, plus a `<out>.sha256` sidecar; return (out, sha256)."""
    out = Path(out)
    save_weights(out, tensors, header)
    digest = sha256_of(out)
    atomic_write_text(sidecar_path(out), f"{digest}  {out.name}\n")
    return out, digest


def read_checksummed(path: Path, expected_sha256: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, header) of `path` after checking its sha256 (given, else the sidecar's, else unchecked)."""
    path = Path(path)
    expected = expected_sha256 or sidecar_digest(path)
    if expected:
        verify_sha256(path, expected)
    return load_weights(path)


def sidecar_path(path: Path) -> Path:
    return Path(f"{path}.sha256")


def sidecar_digest(path: Path) -> str | None:
    """The digest a sidecar records for `path`; None without a sidecar."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return None
    fields = sidecar.read_text().split()
    if not fields:
        raise CheckpointError(f"{sidecar}: empty; expected '<sha256>  {path.name}'")
    return fields[0]
