"""SAMed-2's prompt-free mask decoder: SAM2's decoder (with its high-res skip features) and
num_classes + 1 mask tokens, one set per image."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from samora_kit.api import CheckpointError, ComponentConfig, FeaturePyramid, SamoraError, hookimpl, require
from samora_kit_plugins.sam_weights import read_sam_weights

from .samed import check_widths, default_mlp_dim, pretrained_decoder_file

MASK_IN_CHANS = 16  # SAM2's prompt encoder mask channels
IOU_HEAD_HIDDEN = 256
SAM2_FORMAT = "sam2"  # header format of an imported full SAM2 model (encoder + heads)
# our parameter prefixes -> the official SAM2 checkpoint's (conv_s0/conv_s1 live inside the mask decoder)
OFFICIAL_PREFIXES = {"prompt_encoder.": "sam_prompt_encoder.", "mask_decoder.": "sam_mask_decoder."}
# re-initialised for the new class count, as SAMed does (the object-score head too)
REINITIALISED = ("mask_decoder.mask_tokens.", "mask_decoder.output_hypernetworks_mlps.",
                 "mask_decoder.iou_prediction_head.", "mask_decoder.pred_obj_score_head.")
# parts a prompt-free decoder never runs: kept for the checkpoint layout, frozen
UNUSED = ("prompt_encoder.point_embeddings.", "prompt_encoder.not_a_point_embed.",
          "prompt_encoder.mask_downscaling.", "mask_decoder.iou_prediction_head.",
          "mask_decoder.pred_obj_score_head.")


class Samed2DecoderConfig(ComponentConfig):
    transformer_depth: int = Field(2, ge=1)
    mlp_dim: int | None = Field(None, ge=1)  # None: 2048 for 256 channels, else 8 x channels
    num_heads: int | None = Field(None, ge=1)  # None: 8, or the largest divisor that fits
    checkpoint: Literal["backbone"] | Path | None = "backbone"  # "backbone": the backbone's imported SAM2 file


class Samed2Decoder(nn.Module):
    """FeaturePyramid(embedding B,C,g,g, high_res=(B,C,4g,4g, B,C,2g,2g)) -> logits B,num_classes+1,4g,4g
    (channel 0 = background), as SAM2 decodes a single image with no prompts and no memory."""

    def __init__(self, num_classes: int, channels: int, grid: int, image_size: int,
                 transformer_depth: int = 2, mlp_dim: int | None = None, num_heads: int | None = None) -> None:
        require("sam2", "the samed2 decoder")
        from sam2.modeling.sam.mask_decoder import MaskDecoder
        from sam2.modeling.sam.prompt_encoder import PromptEncoder
        from sam2.modeling.sam.transformer import TwoWayTransformer

        super().__init__()
        heads = check_widths(num_classes, channels, num_heads)
        self.num_classes = num_classes
        self.channels, self.embed_grid = channels, grid
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, channels))  # as SAM2Base
        nn.init.trunc_normal_(self.no_mem_embed, std=0.02)
        self.prompt_encoder = PromptEncoder(embed_dim=channels, image_embedding_size=(grid, grid),
                                            input_image_size=(image_size, image_size), mask_in_chans=MASK_IN_CHANS)
        transformer = TwoWayTransformer(depth=transformer_depth, embedding_dim=channels,
                                        mlp_dim=mlp_dim or default_mlp_dim(channels), num_heads=heads)
        # flags as every SAM2 / SAM2.1 config sets them
        self.mask_decoder = MaskDecoder(transformer_dim=channels, transformer=transformer,
                                        num_multimask_outputs=num_classes, iou_head_depth=3,
                                        iou_head_hidden_dim=IOU_HEAD_HIDDEN, use_high_res_features=True,
                                        iou_prediction_use_sigmoid=True, pred_obj_scores=True,
                                        pred_obj_scores_mlp=True, use_multimask_token_for_obj_ptr=True)
        for name, param in self.named_parameters():
            if name.startswith(UNUSED):
                param.requires_grad_(False)

    def forward(self, features: FeaturePyramid) -> torch.Tensor:
        embedding, s0, s1 = self._check(features)  # B,C,g,g ; B,C,4g,4g ; B,C,2g,2g
        b, c, g, _ = embedding.shape
        md = self.mask_decoder
        feat_s0, feat_s1 = md.conv_s0(s0), md.conv_s1(s1)  # B,C/8,4g,4g ; B,C/4,2g,2g
        # SAM2 order: object-score token, IoU token, mask tokens; no sparse prompts
        tokens = torch.cat([md.obj_score_token.weight, md.iou_token.weight, md.mask_tokens.weight], dim=0)
        tokens = tokens.unsqueeze(0).expand(b, -1, -1)  # B, 2+K, C
        src = embedding + self.no_mem_embed.view(1, c, 1, 1)  # image mode: no memory
        src = src + self.prompt_encoder.no_mask_embed.weight.view(1, c, 1, 1)  # dense prompt: no mask
        pos = self.prompt_encoder.get_dense_pe().expand(b, -1, -1, -1)  # B, C, g, g
        hs, src = md.transformer(src, pos, tokens)  # B, 2+K, C ; B, g*g, C
        mask_tokens_out = hs[:, 2:2 + md.num_mask_tokens]  # B, K, C
        dc1, ln1, act1, dc2, act2 = md.output_upscaling
        upscaled = act1(ln1(dc1(src.transpose(1, 2).reshape(b, c, g, g)) + feat_s1))  # B, C/4, 2g, 2g
        upscaled = act2(dc2(upscaled) + feat_s0)  # B, C/8, 4g, 4g
        hyper = torch.stack([mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(md.output_hypernetworks_mlps)],
                            dim=1)  # B, K, C/8
        h, w = upscaled.shape[-2:]
        return (hyper @ upscaled.flatten(2)).view(b, -1, h, w)  # B, K, 4g, 4g

    def _check(self, features) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c, g = self.channels, self.embed_grid
        expected = (f"FeaturePyramid(embedding B,{c},{g},{g}, high_res=(B,{c},{4 * g},{4 * g}, "
                    f"B,{c},{2 * g},{2 * g}))")
        if isinstance(features, FeaturePyramid) and len(features.high_res) == 2:
            embedding, (s0, s1) = features.embedding, features.high_res
            b = embedding.shape[0]
            if ((tuple(embedding.shape), tuple(s0.shape), tuple(s1.shape))
                    == ((b, c, g, g), (b, c, 4 * g, 4 * g), (b, c, 2 * g, 2 * g))):
                return embedding, s0, s1
            got = (f"FeaturePyramid(embedding {tuple(embedding.shape)}, "
                   f"high_res={tuple(tuple(t.shape) for t in features.high_res)})")
        elif isinstance(features, FeaturePyramid):
            got = f"FeaturePyramid with {len(features.high_res)} high-res levels"
        else:
            got = f"{type(features).__name__} {tuple(getattr(features, 'shape', ()))}"
        raise ValueError(f'decoder "samed2" needs a SAM2 backbone (backbone.name = "sam2") output: expected '
                         f"{expected}; got {got}")

    def load_pretrained(self, path: Path) -> None:
        """SAM2's prompt encoder, mask decoder (with conv_s0/conv_s1) and no_mem_embed, except the
        re-initialised class-specific parts."""
        tensors = read_sam2_weights(path)
        own = self.state_dict()
        wanted = {k: official_key(k) for k in own if not k.startswith(REINITIALISED)}
        for k, theirs in wanted.items():
            if theirs not in tensors:
                raise CheckpointError(f"{path}: missing {theirs} (expected shape {tuple(own[k].shape)}); "
                                      "expected an imported SAM2 checkpoint with matching decoder width")
            if tensors[theirs].shape != own[k].shape:
                raise CheckpointError(f"{path}: {theirs} has shape {tuple(tensors[theirs].shape)}, expected "
                                      f"{tuple(own[k].shape)}; the file is another architecture")
        self.load_state_dict({k: tensors[theirs] for k, theirs in wanted.items()}, strict=False)


def official_key(name: str) -> str:
    """Our state-dict key -> the official SAM2 checkpoint's (e.g. mask_decoder.x -> sam_mask_decoder.x)."""
    for ours, theirs in OFFICIAL_PREFIXES.items():
        if name.startswith(ours):
            return theirs + name[len(ours):]
    return name  # no_mem_embed


def read_sam2_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of an imported full SAM2 model (header format "sam2"), sha256-checked against its sidecar."""
    tensors, header = read_sam_weights(path)
    if header.get("format") != SAM2_FORMAT:
        raise CheckpointError(f"{path}: header format is {header.get('format')!r}, expected {SAM2_FORMAT!r} "
                              "(an imported SAM2 model with its mask decoder)")
    return tensors


def build_samed2_decoder(config: Samed2DecoderConfig, *, backbone, num_classes: int) -> Samed2Decoder:
    """SAMed-2's prompt-free SAM2 mask decoder (num_classes + 1 masks at 4x the embedding grid)."""
    high_res = getattr(backbone, "high_res_channels", None)
    if high_res is None:
        raise SamoraError(f'decoder.name = "samed2" needs backbone.name = "sam2": it reads SAM2\'s multi-scale '
                          f"features, and this backbone ({type(backbone).__name__}) has no high_res_channels")
    c = backbone.embed_channels
    if tuple(high_res) != (c, c):
        raise SamoraError(f'decoder.name = "samed2" needs high-res features with the embedding width: expected '
                          f"high_res_channels ({c}, {c}), got {tuple(high_res)}")
    decoder = Samed2Decoder(num_classes, c, backbone.embed_grid, backbone.image_size,
                            config.transformer_depth, config.mlp_dim, config.num_heads)
    path = pretrained_decoder_file(config.checkpoint, backbone)  # None for a self-pre-trained encoder
    if path is not None:
        decoder.load_pretrained(path)
    return decoder


@hookimpl
def samora_kit_register(registry) -> None:
    registry.add("decoder", "samed2", Samed2DecoderConfig, build_samed2_decoder, example={})
