"""`samora-kit weights import`: official checkpoints converted once into checksummed safetensors.
The conversions are plugins (registry kind "importer": `segment-anything` in plugins/sam, `sam2` in
plugins/sam2); `import_checkpoint` dispatches to them. Their one pickle load is samora_kit.weights.pth,
weights-only, and what they write is read back with samora_kit.weights.checksummed.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from ..errors import CheckpointError


def import_checkpoint(src: Path | None, out: Path, variant: str | None = None, format: str = "segment-anything",
                      registry=None) -> tuple[Path, str]:
    """`samora-kit weights import`: convert the official checkpoint `src` with the importer named `format`
    (`src` None: the file the importer knows without being told, e.g. LiteMedSAM's bundled weights);
    returns (out, sha256 of out)."""
    if registry is None:
        from ..plugins import default_registry

        registry = default_registry()
    formats = registry.names("importer")
    if format not in formats:
        raise CheckpointError(f"unknown checkpoint format {format!r}; expected one of {', '.join(formats)}")
    spec = registry.get("importer", format)
    try:
        config = spec.config_model.model_validate({"variant": variant})
    except ValidationError as exc:
        raise CheckpointError(f"variant {variant!r} is not a {format} variant: {exc.errors()[0]['msg']}") from None
    return spec.build(config, src=None if src is None else Path(src), out=Path(out))
