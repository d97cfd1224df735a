"""SAMed's prompt-free mask decoder: SAM's decoder with num_classes + 1 mask tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from samora_kit.api import (Backbone, CheckpointError, ComponentConfig, FeaturePyramid, embedding_of, hookimpl,
                            read_header)
from samora_kit_plugins.sam_weights import ENCODER_ONLY_FORMATS, read_sam_weights

MASK_IN_CHANS = 16  # SAM's prompt encoder mask channels
IOU_HEAD_HIDDEN = 256
# re-initialised for the new class count, as SAMed does
REINITIALISED = ("mask_decoder.mask_tokens.", "mask_decoder.output_hypernetworks_mlps.",
                 "mask_decoder.iou_prediction_head.")


class SamedDecoderConfig(ComponentConfig):
    transformer_depth: int = Field(2, ge=1)
    mlp_dim: int | None = Field(None, ge=1)  # None: 2048 for 256 channels, else 8 x channels
    num_heads: int | None = Field(None, ge=1)  # None: 8, or the largest divisor that fits
    checkpoint: Literal["backbone"] | Path | None = "backbone"  # "backbone": the backbone's imported file


class SamedDecoder(nn.Module):
    """Embedding B,C,g,g -> low-res logits B,num_classes+1,4g,4g (channel 0 = background)."""

    def __init__(self, num_classes: int, channels: int, grid: int, image_size: int,
                 transformer_depth: int = 2, mlp_dim: int | None = None, num_heads: int | None = None) -> None:
        from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer  # slow import: when built

        super().__init__()
        heads = check_widths(num_classes, channels, num_heads)
        self.num_classes = num_classes
        self.embed_grid = grid
        self.prompt_encoder = PromptEncoder(embed_dim=channels, image_embedding_size=(grid, grid),
                                            input_image_size=(image_size, image_size), mask_in_chans=MASK_IN_CHANS)
        transformer = TwoWayTransformer(depth=transformer_depth, embedding_dim=channels,
                                        mlp_dim=mlp_dim or default_mlp_dim(channels), num_heads=heads)
        self.mask_decoder = MaskDecoder(transformer_dim=channels, transformer=transformer,
                                        num_multimask_outputs=num_classes, iou_head_depth=3,
                                        iou_head_hidden_dim=IOU_HEAD_HIDDEN)
        # what the prompt-free forward never reads (point and mask prompts, the IoU head) gets no gradient:
        # frozen, kept only so that SAM's files load as they are
        for unused in (self.prompt_encoder.point_embeddings, self.prompt_encoder.not_a_point_embed,
                       self.prompt_encoder.mask_downscaling, self.mask_decoder.iou_prediction_head):
            unused.requires_grad_(False)

    def forward(self, features: torch.Tensor | FeaturePyramid) -> torch.Tensor:
        # segment_anything's predict_masks repeats the embedding per prompt; here: one prompt-free set per image
        embedding = embedding_of(features)  # a SAM2 pyramid's finer levels are not used by this decoder
        b, c, g, _ = embedding.shape  # B, C, g, g
        if (c, g) != (self.prompt_encoder.embed_dim, self.embed_grid) or embedding.shape[3] != g:
            raise ValueError(f"decoder expects embeddings B,{self.prompt_encoder.embed_dim},{self.embed_grid},"
                             f"{self.embed_grid}; got {tuple(embedding.shape)}")
        md = self.mask_decoder
        tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)  # 1+K, C
        tokens = tokens.unsqueeze(0).expand(b, -1, -1)  # B, 1+K, C (no sparse prompts)
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, c, 1, 1)
        src = embedding + dense  # B, C, g, g
        pos = self.prompt_encoder.get_dense_pe().expand(b, -1, -1, -1)  # B, C, g, g
        hs, src = md.transformer(src, pos, tokens)  # B, 1+K, C ; B, g*g, C
        mask_tokens_out = hs[:, 1:1 + md.num_mask_tokens]  # B, K, C
        upscaled = md.output_upscaling(src.transpose(1, 2).reshape(b, c, g, g))  # B, C/8, 4g, 4g
        hyper = torch.stack([mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(md.output_hypernetworks_mlps)],
                            dim=1)  # B, K, C/8
        h, w = upscaled.shape[-2:]
        return (hyper @ upscaled.flatten(2)).view(b, -1, h, w)  # B, K, 4g, 4g

    def load_pretrained(self, path: Path) -> None:
        """SAM's prompt encoder and mask decoder, except the re-initialised class-specific parts."""
        tensors, _ = read_sam_weights(path)
        own = self.state_dict()
        wanted = [k for k in own if not k.startswith(REINITIALISED)]
        missing = [k for k in wanted if k not in tensors]
        if missing:
            raise CheckpointError(f"{path}: missing {missing[0]} (expected shape {tuple(own[missing[0]].shape)})"
                                  f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}; "
                                  "expected an imported SAM checkpoint with matching decoder width")
        for k in wanted:
            if tensors[k].shape != own[k].shape:
                raise CheckpointError(f"{path}: {k} has shape {tuple(tensors[k].shape)}, expected "
                                      f"{tuple(own[k].shape)}; the file is another architecture")
        self.load_state_dict({k: tensors[k] for k in wanted}, strict=False)


def check_widths(num_classes: int, channels: int, num_heads: int | None) -> int:
    """What SAM's and SAM2's mask decoders need of their widths; returns the head count to use."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 (foreground classes), got {num_classes}")
    if channels % 8:
        raise ValueError(f"a SAM mask decoder needs embedding channels divisible by 8, got {channels}")
    heads = num_heads or default_num_heads(channels)
    if (channels // 2) % heads:
        raise ValueError(f"num_heads {heads} must divide half the embedding width ({channels // 2})")
    return heads


def default_mlp_dim(channels: int) -> int:
    return 2048 if channels == 256 else 8 * channels


def default_num_heads(channels: int) -> int:
    return next(h for h in range(8, 0, -1) if (channels // 2) % h == 0)


def build_samed_decoder(config: SamedDecoderConfig, *, backbone, num_classes: int) -> SamedDecoder:
    """SAMed's prompt-free SAM mask decoder (num_classes + 1 masks at 4x the embedding grid)."""
    decoder = SamedDecoder(num_classes, backbone.embed_channels, backbone.embed_grid, backbone.image_size,
                           config.transformer_depth, config.mlp_dim, config.num_heads)
    path = pretrained_decoder_file(config.checkpoint, backbone)
    if path is not None:
        decoder.load_pretrained(path)
    return decoder


def pretrained_decoder_file(checkpoint: str | Path | None, backbone: Backbone) -> Path | None:
    """The file a SAM mask decoder starts from: "backbone" means the backbone's imported SAM file,
    unless that is a self-pre-trained encoder, which holds no decoder."""
    if checkpoint != "backbone":
        return None if checkpoint is None else Path(checkpoint)
    path = backbone.checkpoint_path
    if path is None or read_header(path).get("format") in ENCODER_ONLY_FORMATS:
        return None
    return Path(path)


@hookimpl
def samora_kit_register(registry) -> None:
    registry.add("decoder", "samed", SamedDecoderConfig, build_samed_decoder, example={})
