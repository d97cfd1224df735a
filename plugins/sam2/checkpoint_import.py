"""`samora-kit weights import --format sam2` for SAM2's official `.pt` (registry importer "sam2"):
every tensor kept (the decoder heads too), the image encoder checked against the architecture."""

from __future__ import annotations

from pathlib import Path

import torch

from samora_kit.api import CheckpointError, __version__, load_pth_state_dict, sha256_of
from samora_kit_plugins.sam_weights import save_sam_layout

from .backbone import check_state, reference_encoder_state
from .config import SAM2_VARIANTS, Sam2ImportConfig, image_encoder_node, trunk_values

SAM2_TRUNK_PATCH_KEY = "image_encoder.trunk.patch_embed.proj.weight"
SAM2_EXPECTED = ("an official SAM2 checkpoint: {'model': state dict} with image_encoder.trunk.*, "
                 "image_encoder.neck.* and sam_mask_decoder.* tensors")


def import_sam2(config: Sam2ImportConfig, *, src: Path | None, out: Path) -> tuple[Path, str]:
    if src is None:
        raise CheckpointError("--format sam2 needs the checkpoint file: samora-kit weights import --format sam2 "
                              "sam2.1_hiera_base_plus.pt OUT.safetensors")
    return import_sam2_checkpoint(src, out, config.variant)


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
    found = {k: v for k, v in state.items() if k.startswith("image_encoder.")}
    check_state(found, reference_encoder_state(variant), f"{src} (a SAM2 {variant})", "")
