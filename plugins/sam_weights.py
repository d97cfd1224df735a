"""The weight formats of the SAM family (SAM, SAM2, TinyViT-SAM): the official key layout (`image_encoder.*`,
...) in checksummed safetensors whose header names one of FORMATS. Imported official checkpoints and
self-pre-trained encoders are both written and read here, by the backbones, their importers and the decoders
that load a mask decoder; no LoRA or expert code is involved."""

from __future__ import annotations

from pathlib import Path

import torch

from samora_kit.api import CheckpointError, read_checksummed, save_checksummed

# "segment-anything": an imported official checkpoint (encoder, prompt encoder, mask decoder);
# "sam2": an imported official SAM2 checkpoint (image_encoder.trunk/neck, sam_mask_decoder, ...);
# "tinyvit-sam": an imported LiteMedSAM / MobileSAM checkpoint (TinyViT encoder, SAM's prompt encoder and mask
# decoder); "sam-encoder" / "sam2-encoder" / "tinyvit-sam-encoder": an image encoder in SAM's / SAM2's /
# TinyViT-SAM's layout that the kit pre-trained itself (recipes with [base_pretraining]): no prompt encoder,
# no mask decoder
ENCODER_ONLY_FORMATS = ("sam-encoder", "sam2-encoder", "tinyvit-sam-encoder")
FORMATS = ("segment-anything", "sam2", "tinyvit-sam", *ENCODER_ONLY_FORMATS)


def save_sam_layout(out: Path, state: dict[str, torch.Tensor], header: dict) -> tuple[Path, str]:
    """Write SAM- or SAM2-layout tensors (header["format"] one of FORMATS) as safetensors plus a
    `<out>.sha256` sidecar; return (out, sha256)."""
    if header.get("format") not in FORMATS:
        raise ValueError(f"save_sam_layout(): header format is {header.get('format')!r}, expected one of {FORMATS}")
    return save_checksummed(out, state, header)


def read_sam_weights(path: Path, expected_sha256: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a SAM- or SAM2-layout safetensors file after checking its sha256 (given, else the sidecar's)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file; import the official .pth first "
                              "(samora-kit weights import)")
    tensors, header = read_checksummed(path, expected_sha256)
    if header.get("format", "segment-anything") not in FORMATS:
        raise CheckpointError(f"{path}: header format is {header.get('format')!r}, expected one of {FORMATS}")
    return tensors, header
