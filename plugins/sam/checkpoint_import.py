"""`samora-kit weights import` for segment-anything's official `.pth` (registry importer
"segment-anything"): checked against the architecture, stored as safetensors with a sha256 sidecar."""

from __future__ import annotations

from pathlib import Path

import torch

from samora_kit.api import CheckpointError, __version__, load_pth_state_dict, sha256_of
from samora_kit_plugins.sam_weights import save_sam_layout

from .backbone import build_image_encoder
from .config import SAM_PRESETS, SamImportConfig

SAM_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
PATCH_KEY = "image_encoder.patch_embed.proj.weight"
POS_KEY = "image_encoder.pos_embed"
PATCH_SIZE = 16
EXPECTED = ("an official segment-anything checkpoint: a state dict with image_encoder.patch_embed.proj.weight, "
            "image_encoder.blocks.N.attn.qkv.weight, prompt_encoder.* and mask_decoder.* tensors")


def import_sam(config: SamImportConfig, *, src: Path | None, out: Path) -> tuple[Path, str]:
    if src is None:
        raise CheckpointError("--format segment-anything needs the checkpoint file: samora-kit weights import "
                              "sam_vit_b_01ec64.pth OUT.safetensors")
    return import_sam_checkpoint(src, out, config.variant)


def import_sam_checkpoint(src: Path, out: Path, variant: str | None = None) -> tuple[Path, str]:
    """Convert an official SAM `.pth` to safetensors plus a `<out>.sha256` sidecar;
    return (out, sha256 of out)."""
    src, out = Path(src), Path(out)
    state = _load_state_dict(src)
    found = infer_variant(state, src)
    if variant is not None and variant != found:
        raise CheckpointError(f"{src}: holds a SAM {found} (embed dim {state[PATCH_KEY].shape[0]}, "
                              f"depth {_depth(state)}), but variant {variant!r} was requested")
    _check_encoder_layout(state, found, src)
    header = {
        "format": "segment-anything",
        "variant": found,
        "source_image_size": state[POS_KEY].shape[1] * PATCH_SIZE,
        "source_file": src.name,
        "source_sha256": sha256_of(src),
        "samora_kit_version": __version__,
    }
    return save_sam_layout(out, state, header)


def infer_variant(state: dict[str, torch.Tensor], src: Path) -> str:
    embed_dim, depth = state[PATCH_KEY].shape[0], _depth(state)
    for name, preset in SAM_PRESETS.items():
        if (preset.embed_dim, preset.depth) == (embed_dim, depth):
            return name
    known = ", ".join(f"{n} ({p.embed_dim}/{p.depth})" for n, p in SAM_PRESETS.items())
    raise CheckpointError(f"{src}: SAM image encoder with embed dim {embed_dim} and depth {depth} "
                          f"matches no known variant; expected one of {known}")


def _load_state_dict(src: Path) -> dict[str, torch.Tensor]:
    obj = load_pth_state_dict(src, EXPECTED)
    state = {k: v for k, v in obj.items() if isinstance(k, str) and k.startswith(SAM_PREFIXES)}
    missing = [k for k in (PATCH_KEY, POS_KEY, "image_encoder.blocks.0.attn.qkv.weight") if k not in state]
    missing += [f"{p}*" for p in SAM_PREFIXES[1:] if not any(k.startswith(p) for k in state)]
    if missing:
        raise CheckpointError(f"{src}: missing {', '.join(missing)}; expected {EXPECTED}")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{src}: {not_tensors[0]} is not a tensor; expected {EXPECTED}")
    return state


def _depth(state: dict[str, torch.Tensor]) -> int:
    return 1 + max(int(k.split(".")[2]) for k in state if k.startswith("image_encoder.blocks."))


def _check_encoder_layout(state: dict[str, torch.Tensor], variant: str, src: Path) -> None:
    """Compare image_encoder keys and shapes with the official architecture, built on `meta`."""
    image_size = state[POS_KEY].shape[1] * PATCH_SIZE
    with torch.device("meta"):
        reference = build_image_encoder(variant, image_size).state_dict()
    found = {k[len("image_encoder."):]: v for k, v in state.items() if k.startswith("image_encoder.")}
    for key in sorted(set(reference) | set(found)):
        if key not in found:
            raise CheckpointError(f"{src}: missing image_encoder.{key} of a SAM {variant}; expected {EXPECTED}")
        if key not in reference:
            raise CheckpointError(f"{src}: unexpected image_encoder.{key} for a SAM {variant}")
        if found[key].shape != reference[key].shape:
            raise CheckpointError(f"{src}: image_encoder.{key} has shape {tuple(found[key].shape)}, "
                                  f"expected {tuple(reference[key].shape)} for a {image_size}-px SAM {variant}")
