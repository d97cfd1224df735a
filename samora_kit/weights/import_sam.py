"""Import an official SAM `.pth` (or SAM2 `.pt`) once into safetensors; read such imports back.

The `torch.load` below is the only pickle load in samora-kit, and it is weights-only.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import __version__
from ..errors import CheckpointError
from .io import atomic_write_text, load_weights, save_weights, sha256_of, verify_sha256
from .pth import load_pth_state_dict

SAM_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
PATCH_KEY = "image_encoder.patch_embed.proj.weight"
POS_KEY = "image_encoder.pos_embed"
PATCH_SIZE = 16
EXPECTED = ("an official segment-anything checkpoint: a state dict with image_encoder.patch_embed.proj.weight, "
            "image_encoder.blocks.N.attn.qkv.weight, prompt_encoder.* and mask_decoder.* tensors")


# "segment-anything": an imported official checkpoint (encoder, prompt encoder, mask decoder);
# "sam2": an imported official SAM2 checkpoint (image_encoder.trunk/neck, sam_mask_decoder, ...);
# "sam-encoder" / "sam2-encoder": an image encoder in SAM's / SAM2's layout that the kit pre-trained
# itself (recipes with [base_pretraining]): no prompt encoder, no mask decoder
ENCODER_ONLY_FORMATS = ("sam-encoder", "sam2-encoder")
FORMATS = ("segment-anything", "sam2", *ENCODER_ONLY_FORMATS)
IMPORT_FORMATS = ("segment-anything", "sam2")
SAM2_TRUNK_PATCH_KEY = "image_encoder.trunk.patch_embed.proj.weight"
SAM2_EXPECTED = ("an official SAM2 checkpoint: {'model': state dict} with image_encoder.trunk.*, "
                 "image_encoder.neck.* and sam_mask_decoder.* tensors")


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


def import_checkpoint(src: Path, out: Path, variant: str | None = None,
                      format: str = "segment-anything") -> tuple[Path, str]:
    """`samora-kit weights import`: dispatch on the official checkpoint's `format`."""
    if format == "sam2":
        return import_sam2_checkpoint(src, out, variant)
    if format != "segment-anything":
        raise CheckpointError(f"unknown checkpoint format {format!r}; expected one of {IMPORT_FORMATS}")
    return import_sam_checkpoint(src, out, variant)


def import_sam2_checkpoint(src: Path, out: Path, variant: str | None = None) -> tuple[Path, str]:
    """Convert an official SAM2 `.pt` ({"model": state_dict}) to safetensors (every tensor kept, header
    format "sam2" and the detected variant) plus a `<out>.sha256` sidecar; return (out, sha256 of out)."""
    src, out = Path(src), Path(out)
    obj = load_pth_state_dict(src, SAM2_EXPECTED)
    state = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    missing = [k for k in (SAM2_TRUNK_PATCH_KEY, "image_encoder.neck.convs.0.conv.weight") if k not in state]
    if missing:
        raise CheckpointError(f"{src}: missing {', '.join(missing)}; expected {SAM2_EXPECTED}")
    found = infer_sam2_variant(state, src)
    if variant is not None and variant != found:
        raise CheckpointError(f"{src}: holds a SAM2 {found} image encoder, but variant {variant!r} was requested")
    _check_sam2_encoder_layout(state, found, src)
    header = {
        "format": "sam2",
        "variant": found,
        "source_file": src.name,
        "source_sha256": sha256_of(src),
        "samora_kit_version": __version__,
    }
    return save_sam_layout(out, state, header)


def infer_sam2_variant(state: dict[str, torch.Tensor], src: Path) -> str:
    """The sam2 variant (t, s, b+, l, tiny) whose trunk has this width and depth."""
    from samora_kit_plugins.sam2.config import SAM2_VARIANTS, image_encoder_node, trunk_values

    width = state[SAM2_TRUNK_PATCH_KEY].shape[0]
    depth = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("image_encoder.trunk.blocks."))
    known = {}
    for name in SAM2_VARIANTS:
        trunk = trunk_values(image_encoder_node(name))
        known[name] = (int(trunk["embed_dim"]), sum(int(s) for s in trunk["stages"]))
        if known[name] == (width, depth):
            return name
    listed = ", ".join(f"{n} ({w}/{d})" for n, (w, d) in known.items())
    raise CheckpointError(f"{src}: SAM2 trunk with embed dim {width} and depth {depth} matches no known "
                          f"variant; expected one of {listed}")


def _check_sam2_encoder_layout(state: dict[str, torch.Tensor], variant: str, src: Path) -> None:
    from samora_kit_plugins.sam2.backbone import check_state, reference_encoder_state

    found = {k: v for k, v in state.items() if k.startswith("image_encoder.")}
    check_state(found, reference_encoder_state(variant), f"{src} (a SAM2 {variant})", "")


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


def infer_variant(state: dict[str, torch.Tensor], src: Path) -> str:
    from samora_kit_plugins.sam.config import SAM_PRESETS  # the one preset table

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
    from samora_kit_plugins.sam.backbone import build_image_encoder

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


def _sidecar_digest(path: Path) -> str | None:
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return None
    fields = sidecar.read_text().split()
    if not fields:
        raise CheckpointError(f"{sidecar}: empty; expected '<sha256>  {path.name}'")
    return fields[0]
