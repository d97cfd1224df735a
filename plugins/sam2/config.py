"""Configs of the SAM2 Hiera backbone and its checkpoint importer, and where each variant's architecture comes from.

The architecture is the `model.image_encoder` node of a sam2 YAML config, read with omegaconf
from the installed sam2 package's files (never Hydra's search path), or a tiny one defined here."""

from __future__ import annotations

import importlib.resources
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import model_validator

from samora_kit.api import ComponentConfig, SamoraError, require
from samora_kit_plugins.lora.config import LoRABackboneConfig

if TYPE_CHECKING:  # omegaconf loads when an architecture is read: the plugin registers without it
    from omegaconf import DictConfig

Sam2Variant = Literal["t", "s", "b+", "l", "tiny"]
SAM2_VARIANTS = ("t", "s", "b+", "l", "tiny")
PACKAGED = {v: f"configs/sam2.1/sam2.1_hiera_{v}.yaml" for v in ("t", "s", "b+", "l")}
HIERA_TARGET = "sam2.modeling.backbones.hieradet.Hiera"
NECK_TARGET = "sam2.modeling.backbones.image_encoder.FpnNeck"
POS_TARGET = "sam2.modeling.position_encoding.PositionEmbeddingSine"

# a few hundred k parameters, runs at 64 px (grids 16/8/4/2; at 96 px stage 3's 4-token windows are padded):
# tests and the CPU quick start
TINY_IMAGE_ENCODER = {
    "_target_": "sam2.modeling.backbones.image_encoder.ImageEncoder",
    "scalp": 1,
    "trunk": {"_target_": HIERA_TARGET, "embed_dim": 16, "num_heads": 1, "stages": [1, 1, 3, 1],
              "global_att_blocks": [3], "window_pos_embed_bkg_spatial_size": [4, 4],
              "window_spec": [4, 4, 4, 2]},
    "neck": {"_target_": NECK_TARGET,
             "position_encoding": {"_target_": POS_TARGET, "num_pos_feats": 32, "normalize": True,
                                   "scale": None, "temperature": 10000},
             "d_model": 32, "backbone_channel_list": [128, 64, 32, 16], "fpn_top_down_levels": [2, 3],
             "fpn_interp_model": "nearest"},
}
HIERA_DEFAULTS = {"embed_dim": 96, "num_heads": 1, "stages": [2, 3, 16, 3], "window_spec": [8, 4, 14, 7],
                  "global_att_blocks": [12, 16, 20], "q_pool": 3}


RESOLVER_CALL = re.compile(r"\$\{\s*[A-Za-z_][\w.]*\s*:")  # ${oc.env:HOME}; not ${scratch.resolution}


def config_source(variant: str, config_file: Path | None) -> str:
    """Human-readable name of where the architecture comes from."""
    if config_file is not None:
        return str(config_file)
    return "built-in tiny config" if variant == "tiny" else f"sam2 package file {PACKAGED[variant]}"


def image_encoder_node(variant: str, config_file: Path | None = None) -> DictConfig:
    """The `model.image_encoder` node (scalp, trunk, neck) for `variant` or an explicit YAML file."""
    from omegaconf import DictConfig, OmegaConf

    if config_file is None and variant == "tiny":
        return OmegaConf.create(TINY_IMAGE_ENCODER)
    source = config_source(variant, config_file)
    if config_file is None:  # a file inside the sam2 package (an optional extra)
        require("sam2", f"the sam2 backbone's variant {variant!r}")
    try:
        if config_file is not None:
            text = Path(config_file).read_text()
        else:
            text = (importlib.resources.files("sam2") / PACKAGED[variant]).read_text()
        root = OmegaConf.create(text)
    except FileNotFoundError:
        raise SamoraError(f"{source}: no such file; expected a sam2 YAML config "
                          "(e.g. sam2.1_hiera_b+.yaml) with a model.image_encoder section") from None
    except Exception as exc:  # OSError, YAML errors, ...
        raise SamoraError(f"{source}: cannot be read as a YAML config ({type(exc).__name__}: {exc}); "
                          "expected a sam2 config with a model.image_encoder section") from None
    node = OmegaConf.select(root, "model.image_encoder") if isinstance(root, DictConfig) else None
    if not isinstance(node, DictConfig):
        raise SamoraError(f"{source}: has no model.image_encoder mapping; expected a sam2 model config")
    resolver = _first_resolver(OmegaConf.to_container(node, resolve=False), "model.image_encoder")
    if resolver is not None:  # ${oc.env:...} and friends would read the environment (and print it in errors)
        raise SamoraError(f"{source}: {resolver} calls an OmegaConf resolver; a model config may refer to its own "
                          "keys (${a.b}) but not to resolvers such as oc.env")
    for key, target in (("trunk", HIERA_TARGET), ("neck", NECK_TARGET)):
        sub = node.get(key)
        if not isinstance(sub, DictConfig) or sub.get("_target_") != target:
            found = sub.get("_target_") if isinstance(sub, DictConfig) else sub
            raise SamoraError(f"{source}: model.image_encoder.{key}._target_ is {found!r}, expected {target!r}")
    return node


def _first_resolver(value, where: str) -> str | None:
    """The key path of the first string that calls a resolver (${name:...}), without its value."""
    if isinstance(value, dict):
        return next((found for k, v in value.items() if (found := _first_resolver(v, f"{where}.{k}"))), None)
    if isinstance(value, list):
        return next((found for i, v in enumerate(value) if (found := _first_resolver(v, f"{where}[{i}]"))), None)
    return where if isinstance(value, str) and RESOLVER_CALL.search(value) else None


def trunk_values(node: DictConfig) -> dict:
    """The Hiera keyword arguments of an image_encoder node, with Hiera's defaults filled in."""
    from omegaconf import OmegaConf

    values = {k: v for k, v in OmegaConf.to_container(node.trunk, resolve=True).items() if k != "_target_"}
    return {**HIERA_DEFAULTS, **values}


class Sam2BackboneConfig(LoRABackboneConfig):
    variant: Sam2Variant = "b+"  # the paper's
    config_file: Path | None = None  # a sam2 YAML instead of the packaged sam2.1_hiera_<variant>.yaml
    image_size: int = 224

    @model_validator(mode="after")
    def _fits_the_architecture(self) -> "Sam2BackboneConfig":
        if self.experts is not None and self.experts.scope != "attention":
            raise ValueError(f"experts.scope {self.experts.scope!r} is not implemented for the sam2 backbone; "
                             "use experts.scope: attention")
        trunk = trunk_values(image_encoder_node(self.variant, self.config_file))
        window = int(trunk["window_spec"][0])
        size = self.image_size
        if size <= 0 or size % 32 or (size // 4) % window:
            raise ValueError(f"image_size {size} must be a positive multiple of 32 (Hiera's 4 stages) with "
                             f"image_size/4 divisible by the first window size {window} "
                             f"({config_source(self.variant, self.config_file)}), e.g. 224, 512 or 1024")
        self.check_lora_blocks(f"sam2 {self.variant}'s trunk")
        return self

    def depth(self) -> int:
        return sum(int(s) for s in trunk_values(image_encoder_node(self.variant, self.config_file))["stages"])


class Sam2ImportConfig(ComponentConfig):
    variant: Sam2Variant | None = None  # refuse the file unless it holds this variant
