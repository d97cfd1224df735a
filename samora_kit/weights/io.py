"""safetensors files with a JSON header, written atomically (temp file, fsync, rename)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, SamoraError, WriteError, describe_os_error

HEADER_KEY = "samora_kit"  # safetensors metadata key holding our JSON header


def atomic_write(path: str | Path, write) -> Path:
    """Call write(tmp_path), then move tmp over path: readers never see half a file. A failure of the
    file system (full disk, permissions) raises WriteError naming the file; the old file stays. A folder
    where the file should go (`schema -o FOLDER`), or a file where a folder should, is a bad argument
    (SamoraError), not a failure while running."""
    path = Path(path)
    if path.is_dir():
        raise SamoraError(f"{path}: is a folder; expected the path of a file to write")
    blocker = next((p for p in path.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise SamoraError(f"{path}: cannot be written: {blocker} is a file, not a folder")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the file gets what a plain open() would
        os.replace(tmp, path)
    except (OSError, SafetensorError) as exc:
        _discard(tmp)
        raise WriteError(f"{path}: cannot be written ({describe_os_error(exc)})"
                         + ("; the previous file is unchanged" if path.exists() else "")) from None
    except BaseException:
        _discard(tmp)
        raise
    return path


def _discard(tmp: str | None) -> None:
    if tmp is not None:
        Path(tmp).unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_weights(path: str | Path, tensors: dict[str, torch.Tensor], header: dict) -> Path:
    """Save tensors with `header` (JSON-serialisable) in the safetensors metadata."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {HEADER_KEY: json.dumps(header, sort_keys=True, default=str)}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_header(path: str | Path) -> dict:
    path = _existing(path)
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if n <= 0 or n > 100_000_000:
                raise ValueError("bad header length")
            raw = json.loads(fh.read(n))
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"{path}: not a safetensors file ({exc})") from None
    meta = raw.get("__metadata__") or {}
    if HEADER_KEY not in meta:
        return {}
    return json.loads(meta[HEADER_KEY])


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Return (tensors, header). A truncated or foreign file raises CheckpointError."""
    path = _existing(path)
    header = read_header(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupted or truncated safetensors file ({exc})") from None
    return tensors, header


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: str | Path, expected: str) -> None:
    actual = sha256_of(path)
    if actual != expected.lower():
        raise CheckpointError(f"{path}: sha256 is {actual}, expected {expected}; "
                              "the file is corrupted or not the one the recipe names")


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    return path
