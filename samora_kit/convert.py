"""`samora-kit data convert KIND SRC DST`: turn a public download into the folder a dataset adapter
reads. The conversions are plugins (registry kind "converter"; the built-in ones, `la` and `promise12`,
live beside their adapters in plugins/datasets/convert.py); this checks the folders and dispatches."""

from __future__ import annotations

from pathlib import Path

from .errors import DataError
from .registry import Registry, did_you_mean


def convert(kind: str, src: Path, dst: Path, registry: Registry | None = None) -> Path:
    """Convert the download at `src` into `dst` (created if needed) for the `kind` adapter; returns dst."""
    if registry is None:
        from .plugins import default_registry

        registry = default_registry()
    kinds = registry.names("converter")
    if kind not in kinds:
        raise DataError(f"unknown conversion {kind!r}; expected one of {', '.join(kinds)}{did_you_mean(kind, kinds)}")
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise DataError(f"{src}: no such folder; expected the {kind} download")
    if dst.resolve() == src.resolve():
        raise DataError(f"{dst}: the destination must differ from the source folder")
    return registry.get("converter", kind).build({}, src=src, dst=dst)
