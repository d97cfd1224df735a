"""What the SAM, SAM2 and TinyViT-SAM backbones share: how their blocks take LoRA or experts, their LoRA / expert bookkeeping, parameter groups, block outputs
(and, from BackboneFiles, the expert packs and encoder files they write and read).

A host keeps its LoRA blocks at `self.encoder.blocks` (SAM: the ViT's blocks; SAM2: the Hiera
trunk's), so tensor names are `encoder.blocks.N.attn.qkv.*` for both, as expert packs expect."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from samora_kit.api import CheckpointError, SamoraError

from .backbone_files import BackboneFiles
from .expert_pack import ExpertPack, check_compatible, make_header
from .experts_qkv import ExpertsQKV
from .lora_qkv import LoRAQKV

QKV_PREFIX = "encoder.blocks.{}.attn.qkv."


class ExpertHost(BackboneFiles):
    """Mixin for an nn.Module with `encoder.blocks`, `experts_config`, `lora_rank`, `lora_targets`,
    `lora_blocks` and a `shape_description()`; the fused blocks carry a `fuser` module."""

    encoder: nn.Module
    experts_config: object
    lora_rank: int
    lora_targets: tuple[str, ...]
    lora_blocks: list[int]

    def shape_description(self) -> dict:
        raise NotImplementedError

    def adapt_blocks(self, config, fuser, install: Callable[..., object], builder: str) -> None:
        """Adapt every LoRA block of the frozen encoder. Without `config.experts` (SAMed, stage 1): one LoRA
        on the chosen projections of its qkv. With them (stage 2): the frozen experts and a fuser built for
        the block's own width and heads, put in by `install(block, names, rank, targets, fuser)`, then the
        experts' packs loaded. `builder` names the backbone's factory in the refusals."""
        blocks = self.encoder.blocks
        if config.experts is None:
            if fuser is not None:
                raise SamoraError("a fuser was given, but backbone.experts is not configured: a single-LoRA "
                                  "backbone (SAMed, stage 1) has nothing to fuse; add backbone.experts.names")
            for i in self.lora_blocks:
                blocks[i].attn.qkv = LoRAQKV(blocks[i].attn.qkv, config.lora.rank, config.lora.targets)
            return
        if fuser is None:
            raise SamoraError(f"backbone.experts {config.experts.names} is configured, so a fuser is required: "
                              f"{builder}(config, fuser=...), i.e. a recipe `fuser` section")
        names = list(config.experts.names)
        for i in self.lora_blocks:
            block = blocks[i]
            install(block, names, config.lora.rank, self.lora_targets,
                    fuser(block_width(block), block.attn.num_heads, list(names)))
        self.load_expert_packs(config.experts.packs)

    def lora_layers(self) -> dict[int, LoRAQKV]:
        """Block index -> its LoRA-wrapped qkv."""
        return {i: b.attn.qkv for i, b in enumerate(self.encoder.blocks) if isinstance(b.attn.qkv, LoRAQKV)}

    def expert_layers(self) -> dict[int, ExpertsQKV]:
        """Block index -> its experts' qkv (stage 2 only)."""
        return {i: b.attn.qkv for i, b in enumerate(self.encoder.blocks) if isinstance(b.attn.qkv, ExpertsQKV)}

    def fusers(self) -> dict[int, nn.Module]:
        """Block index -> its fuser (stage 2 only)."""
        return {i: b.fuser for i, b in enumerate(self.encoder.blocks)
                if isinstance(getattr(b, "fuser", None), nn.Module)}

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
            raise CheckpointError(f"{what} tensor {bad[0]} has shape {tuple(state[bad[0]].shape)}, "
                                  f"expected {tuple(own[bad[0]].shape)}")
        self.load_state_dict(state, strict=False)

    # --- ParameterGroups and Diagnostics (samora_kit.interfaces) -----------------------------------------

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The fusers' and the LoRA's trainable parameters, each group with its own recipe lr."""
        # only A and B, not the qkv a LoRA wraps (base pre-training trains that one at train.lr)
        lora = [p for layer in self.lora_layers().values() for factors in (layer.lora_a, layer.lora_b)
                for p in factors.parameters()]
        groups = {"fuser": [p for f in self.fusers().values() for p in f.parameters() if p.requires_grad],
                  "lora": [p for p in lora if p.requires_grad]}
        return {name: params for name, params in groups.items() if params}

    def record_diagnostics(self, enabled: bool) -> None:
        """While enabled, every fused block keeps ||fused term|| / ||frozen attention output|| of its forward."""
        for state in self._fusions().values():
            state.recording = enabled
            state.fused_ratio = None

    def diagnostics(self) -> dict[str, torch.Tensor]:
        """`fused_ratio/blockNN` of each fused block's last recorded forward (LoRAHub blocks have none)."""
        return {f"fused_ratio/block{i:02d}": state.fused_ratio for i, state in self._fusions().items()
                if state.fused_ratio is not None}

    def _fusions(self) -> dict:
        """Block index -> the FusionState of its fused block (stage 2 only)."""
        return {i: b.fusion for i, b in enumerate(self.encoder.blocks) if getattr(b, "fusion", None) is not None}

    def train_whole_encoder(self) -> None:
        """Base pre-training: every image-encoder weight learns (SAM2: trunk and neck); the LoRA factors
        stay frozen at B = 0, so the encoder trains as if it had none."""
        if self.experts_config is not None:
            raise SamoraError("train_whole_encoder(): this backbone has stage-2 experts; base pre-training "
                              "trains a single-LoRA backbone (drop backbone.experts)")
        for name, param in self.named_parameters():
            param.requires_grad = ".lora_" not in name

    def lora_description(self) -> dict:
        return {"rank": self.lora_rank, "targets": list(self.lora_targets), "blocks": list(self.lora_blocks)}

    def expert_state(self, name: str) -> dict[str, torch.Tensor]:
        """Stage 2: one expert's tensors, keyed as a single-LoRA backbone's trainable_state_dict."""
        return {QKV_PREFIX.format(i) + k: v
                for i, layer in self.expert_layers().items() for k, v in layer.expert_state(name).items()}

    def load_expert(self, name: str, tensors: dict[str, torch.Tensor], source: str = "tensors") -> None:
        """Stage 2: set expert `name` from tensors keyed as in an expert pack (checked first)."""
        if name not in self.expert_names:
            raise SamoraError(f"no expert named {name!r}; this backbone's experts are {self.expert_names}")
        header = make_header(name, self.shape_description(), self.lora_description())
        check_compatible(ExpertPack(tensors, header), self.shape_description(), self.lora_description(), source)
        for i, layer in self.expert_layers().items():
            prefix = QKV_PREFIX.format(i)
            layer.load_expert(name, {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})

    # --- PretrainableBackbone -------------------------------------------------------------------------

    @property
    def block_channels(self) -> list[int]:
        """Output width of each encoder block, in order."""
        return [block_width(b) for b in self.encoder.blocks]

    def block_outputs(self, images: torch.Tensor, blocks: list[int]):
        """One forward pass: (the backbone output, [channels-last B,h,w,W_i output of each of `blocks`])."""
        depth = len(self.encoder.blocks)
        bad = [b for b in blocks if not isinstance(b, int) or not 0 <= b < depth]
        if bad:
            raise ValueError(f"block_outputs(): block {bad[0]!r} out of range; this encoder has blocks 0..{depth - 1}")
        seen: dict[int, torch.Tensor] = {}
        hooks = [self.encoder.blocks[i].register_forward_hook(_recorder(seen, i)) for i in sorted(set(blocks))]
        try:
            out = self(images)
        finally:
            for hook in hooks:
                hook.remove()
        return out, [seen[i] for i in blocks]


def block_width(block: nn.Module) -> int:
    """Output channels of a SAM ViT Block, a SAM2 MultiScaleBlock or a TinyViT block."""
    dim_out = getattr(block, "dim_out", None)
    return int(dim_out) if dim_out is not None else int(block.norm1.normalized_shape[0])


def _recorder(store: dict[int, torch.Tensor], index: int):
    def hook(_module, _inputs, output):
        store[index] = output
    return hook
