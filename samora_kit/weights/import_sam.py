"""Imported weights files: official checkpoints converted once into safetensors with a JSON header and
a sha256 sidecar, read back here. The conversions themselves are plugins (registry kind "importer":
`segment-anything` in plugins/sam, `sam2` in plugins/sam2); `import_checkpoint` dispatches to them.
Their one pickle load is samora_kit.weights.pth, weights-only.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import ValidationError

from ..errors import CheckpointError
from .io import atomic_write_text, load_weights, save_weights, sha256_of, verify_sha256

# "segment-anything": an imported official checkpoint (encoder, prompt encoder, mask decoder);
# "sam2": an imported official SAM2 checkpoint (image_encoder.trunk/neck, sam_mask_decoder, ...);
# "sam-encoder" / "sam2-encoder": an image encoder in SAM's / SAM2's layout that the kit pre-trained
# itself (recipes with [base_pretraining]): no prompt encoder, no mask decoder
ENCODER_ONLY_FORMATS = ("sam-encoder", "sam2-encoder")
FORMATS = ("segment-anything", "sam2", *ENCODER_ONLY_FORMATS)


def save_sam_layout(out: Path, state: dict[str, torch.Tensor], header: dict) -> tuple[Path, str]:
    """Write SAM-layout tensors as safetensors plus a `<out>.sha256` sidecar; return (out, sha256)."""
    save_weights(out, state, header)
    digest = sha256_of(out)
    atomic_write_text(sidecar_path(out), f"{digest}  {out.name}\n")
    return out, digest


def read_sam_weights(path: Path, expected_sha256: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Load an imported SAM safetensors file after checking its sha256 (given, else the sidecar's)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file; import the official .pth first "
                              "(samora_kit.weights.import_sam.import_sam_checkpoint)")
    expected = expected_sha256 or _sidecar_digest(path)
    if expected:
        verify_sha256(path, expected)
    tensors, header = load_weights(path)
    if header.get("format", "segment-anything") not in FORMATS:
        raise CheckpointError(f"{path}: header format is {header.get('format')!r}, expected one of {FORMATS}")
    return tensors, header


def sidecar_path(path: Path) -> Path:
    return Path(f"{path}.sha256")


def _sidecar_digest(path: Path) -> str | None:
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return None
    fields = sidecar.read_text().split()
    if not fields:
        raise CheckpointError(f"{sidecar}: empty; expected '<sha256>  {path.name}'")
    return fields[0]


def import_checkpoint(src: Path, out: Path, variant: str | None = None, format: str = "segment-anything",
                      registry=None) -> tuple[Path, str]:
    """`samora-kit weights import`: convert the official checkpoint `src` with the importer named `format`;
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
    return spec.build(config, src=Path(src), out=Path(out))
