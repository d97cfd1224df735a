"""Frozen SAM ViT image encoder with LoRA on the fused qkv of chosen blocks."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling import ImageEncoderViT
from torch import nn

from samora_kit.errors import CheckpointError, SamoraError
from samora_kit.weights.expert_pack import ExpertPack, check_compatible, load_expert_pack, make_header
from samora_kit.weights.import_sam import read_sam_weights

from .config import SAM_PRESETS, SamBackboneConfig
from .experts import ExpertFusedBlock, ExpertsQKV, FuserFactory, install_experts
from .lora import LoRAQKV
from .pretrained import fit_encoder_state

PATCH_SIZE = 16
ENCODER_PREFIX = "image_encoder."


def build_image_encoder(variant: str, image_size: int) -> ImageEncoderViT:
    """The official SAM encoder architecture at `image_size` (random weights)."""
    p = SAM_PRESETS[variant]
    return ImageEncoderViT(
        img_size=image_size, patch_size=PATCH_SIZE, embed_dim=p.embed_dim, depth=p.depth,
        num_heads=p.num_heads, mlp_ratio=4, out_chans=p.out_chans, qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), act_layer=nn.GELU, use_abs_pos=True,
        use_rel_pos=True, rel_pos_zero_init=True, window_size=p.window_size,
        global_attn_indexes=p.global_attn_indexes,
    )


PROVENANCE = ("pretext", "teacher", "teacher_cpt", "data_fingerprint", "versions")


class SamBackbone(nn.Module):
    """Input B,3,S,S in [0, 1] (pixel mean 0 / std 1, as SAMed); output B,C,g,g.

    Without `config.experts`: one trainable LoRA (SAMed, stage 1). With it: K frozen LoRA
    experts per LoRA block and one fuser per block (from `fuser`), the only trainable part."""

    def __init__(self, config: SamBackboneConfig, fuser: FuserFactory | None = None) -> None:
        super().__init__()
        self.variant = config.variant
        self.image_size = config.image_size
        self.embed_channels = config.preset.out_chans
        self.embed_grid = config.image_size // PATCH_SIZE
        self.checkpoint_path: Path | None = config.checkpoint
        self.lora_rank = config.lora.rank
        self.lora_targets = tuple(t for t in ("q", "k", "v") if t in config.lora.targets)
        self.lora_blocks = config.lora_block_indexes()
        self.experts_config = config.experts
        self.encoder = build_image_encoder(config.variant, config.image_size)
        if config.checkpoint is not None:
            self._load_pretrained(config.checkpoint, config.checkpoint_sha256)
        self.encoder.requires_grad_(False)
        if config.experts is None:
            if fuser is not None:
                raise SamoraError("a fuser was given, but backbone.experts is not configured: a single-LoRA "
                                  "backbone (SAMed, stage 1) has nothing to fuse; add backbone.experts.names")
            for i in self.lora_blocks:
                attn = self.encoder.blocks[i].attn
                attn.qkv = LoRAQKV(attn.qkv, config.lora.rank, config.lora.targets)
        else:
            if fuser is None:
                raise SamoraError(f"backbone.experts {config.experts.names} is configured, so a fuser is "
                                  "required: build_sam_backbone(config, fuser=...), i.e. a recipe `fuser` section")
            preset = config.preset
            names = list(config.experts.names)
            for i in self.lora_blocks:
                install_experts(self.encoder.blocks[i], names, config.lora.rank, self.lora_targets,
                                fuser(preset.embed_dim, preset.num_heads, list(names)), config.experts.scope)
            for name, path in config.experts.packs.items():
                self.load_expert_pack(name, path)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        expected = (3, self.image_size, self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"SAM backbone expects images B,{','.join(map(str, expected))}; "
                             f"got {tuple(images.shape)}")
        return self.encoder(images)  # B, C, g, g

    def lora_layers(self) -> dict[int, LoRAQKV]:
        """Block index -> its LoRA-wrapped qkv."""
        return {i: b.attn.qkv for i, b in enumerate(self.encoder.blocks) if isinstance(b.attn.qkv, LoRAQKV)}

    def expert_layers(self) -> dict[int, ExpertsQKV]:
        """Block index -> its experts' qkv (stage 2 only)."""
        return {i: b.attn.qkv for i, b in enumerate(self.encoder.blocks) if isinstance(b.attn.qkv, ExpertsQKV)}

    def fusers(self) -> dict[int, nn.Module]:
        """Block index -> its fuser (stage 2 only)."""
        return {i: b.fuser for i, b in enumerate(self.encoder.blocks) if isinstance(b, ExpertFusedBlock)}

    @property
    def expert_names(self) -> list[str]:
        return list(self.experts_config.names) if self.experts_config is not None else []

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Single LoRA: its A/B tensors, keyed like `encoder.blocks.0.attn.qkv.lora_a.q.weight`.
        Experts: the fusers' tensors, keyed like `encoder.blocks.0.fuser.<name>` (experts are frozen)."""
        if self.experts_config is not None:
            return {f"encoder.blocks.{i}.fuser.{k}": v
                    for i, fuser in self.fusers().items() for k, v in fuser.state_dict().items()}
        return {k: v for k, v in self.state_dict().items() if ".lora_a." in k or ".lora_b." in k}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        own = self.trainable_state_dict()
        what = "fuser" if self.experts_config is not None else "LoRA"
        if set(state) != set(own):
            missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
            raise CheckpointError(f"{what} tensors do not match this backbone: missing {missing[:3]}, "
                                  f"unexpected {extra[:3]}")
        bad = [k for k in own if own[k].shape != state[k].shape]
        if bad:
            raise CheckpointError(f"LoRA tensor {bad[0]} has shape {tuple(state[bad[0]].shape)}, "
                                  f"expected {tuple(own[bad[0]].shape)}")
        self.load_state_dict(state, strict=False)

    def shape_description(self) -> dict:
        """What an expert pack must match: backbone name, variant, image size, width, depth."""
        preset = SAM_PRESETS[self.variant]
        return {"name": "sam", "variant": self.variant, "image_size": self.image_size,
                "embed_dim": preset.embed_dim, "depth": preset.depth}

    def lora_description(self) -> dict:
        return {"rank": self.lora_rank, "targets": list(self.lora_targets), "blocks": list(self.lora_blocks)}

    def expert_state(self, name: str) -> dict[str, torch.Tensor]:
        """Stage 2: one expert's tensors, keyed as a single-LoRA backbone's trainable_state_dict."""
        return {f"encoder.blocks.{i}.attn.qkv.{k}": v
                for i, layer in self.expert_layers().items() for k, v in layer.expert_state(name).items()}

    def load_expert(self, name: str, tensors: dict[str, torch.Tensor], source: str = "tensors") -> None:
        """Stage 2: set expert `name` from tensors keyed as in an expert pack (checked first)."""
        if name not in self.expert_names:
            raise SamoraError(f"no expert named {name!r}; this backbone's experts are {self.expert_names}")
        header = make_header(name, self.shape_description(), self.lora_description())
        check_compatible(ExpertPack(tensors, header), self.shape_description(), self.lora_description(), source)
        prefix = "encoder.blocks.{}.attn.qkv."
        for i, layer in self.expert_layers().items():
            layer.load_expert(name, {k[len(prefix.format(i)):]: v for k, v in tensors.items()
                                     if k.startswith(prefix.format(i))})

    def load_expert_pack(self, name: str, path: str | Path) -> ExpertPack:
        """Stage 2: load expert `name` from a pack file after checking it fits this backbone."""
        pack = load_expert_pack(path)
        check_compatible(pack, self.shape_description(), self.lora_description(), path, expert=name)
        self.load_expert(name, pack.tensors, str(path))
        return pack

    def expert_pack(self, expert: str, **provenance) -> ExpertPack:
        """This backbone's LoRA as an expert pack (stage 1 output): tensors plus a header describing
        the backbone shape and the LoRA. Provenance: pretext, teacher, teacher_cpt, data_fingerprint,
        versions. On a stage-2 backbone, exports the frozen expert `expert`."""
        unknown = sorted(set(provenance) - set(PROVENANCE))
        if unknown:
            raise TypeError(f"expert_pack() got unknown provenance {unknown}; accepted: {', '.join(PROVENANCE)}")
        if not isinstance(expert, str) or not expert:
            raise ValueError("expert_pack() needs the expert's name, e.g. 'image'")
        if self.experts_config is None:
            tensors = {k: v.detach().clone() for k, v in self.trainable_state_dict().items()}
        else:
            if expert not in self.expert_names:
                raise SamoraError(f"no expert named {expert!r}; this backbone's experts are {self.expert_names}")
            tensors = self.expert_state(expert)
        header = make_header(expert, self.shape_description(), self.lora_description(), **provenance)
        return ExpertPack(tensors, header)

    def encoder_state_in_sam_layout(self) -> dict[str, torch.Tensor]:
        """The encoder's own weights (no LoRA) under SAM's official `image_encoder.*` names."""
        return {ENCODER_PREFIX + k.replace(".qkv.base.", ".qkv."): v.detach()
                for k, v in self.encoder.state_dict().items()
                if ".lora_" not in k and ".expert_" not in k and ".fuser." not in k}

    def _load_pretrained(self, path: Path, sha256: str | None) -> None:
        tensors, header = read_sam_weights(path, sha256)
        if header.get("variant", self.variant) != self.variant:
            raise CheckpointError(f"{path}: header variant is {header['variant']!r}, "
                                  f"but the backbone is configured as {self.variant!r}")
        found = {k[len(ENCODER_PREFIX):]: v for k, v in tensors.items() if k.startswith(ENCODER_PREFIX)}
        if not found:
            raise CheckpointError(f"{path}: holds no image_encoder.* tensors; expected an imported SAM checkpoint")
        fitted = fit_encoder_state(found, self.encoder.state_dict(),
                                   SAM_PRESETS[self.variant].global_attn_indexes, Path(path))
        self.encoder.load_state_dict(fitted)


def build_sam_backbone(config: SamBackboneConfig, *, fuser: FuserFactory | None = None) -> SamBackbone:
    """SAM ViT image encoder, frozen, with SAMed-style LoRA on q/v (or fused frozen LoRA experts)."""
    return SamBackbone(config, fuser=fuser)
