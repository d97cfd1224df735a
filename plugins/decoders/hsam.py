"""H-SAM's two-stage hierarchical decoder (Cheng et al., CVPR 2024), for any number of classes.

Stage 1 (``decoder1``) is SAMed's prompt-free SAM mask decoder (:class:`SamedDecoder`, by composition,
SAM weights loaded like samed's). Besides the low-res logits B,K+1,4g,4g it yields

* ``msk_feat`` B,K+1,g*g: the mask tokens leaving the two-way transformer dotted with the transformer's
  image output (``hs[:, 1:] @ src^T``), exactly what H-SAM's ``MaskDecoder_{224,512}.predict_masks``
  returns; (K+1 = num_classes + 1 mask tokens, background first);
* ``up_embed`` B,C/8,4g,4g: decoder 1's 4x upscaled embedding.

Stage 2 (``mask_decoder2``, H-SAM's ``MaskDecoder2`` names):

* prior = decoder-1 logits bilinearly downsampled to g x g, softmaxed over classes, B,K+1,g*g;
* in training the image embedding gets Gaussian noise of ``embedding_noise * (max - min)`` (max/min of
  the whole batch tensor, detached, as H-SAM's trainer) before stage 2; never in eval;
* class-balanced mask-guided self-attention: ``msk_feat`` (classes = tokens, pixels = features,
  feature dim g*g) -> self_attn -> norm1 -> self_attn2 -> +mlp -> norm2 -> Linear(K+1 -> 1)+ReLU ->
  softmax over the g*g positions -> map; src <- src + src * map;
* learnable-mask cross-attention: :class:`TwoWayTransformer2`, whose :class:`Attention2` multiplies the
  token->image (and image->token, transposed) softmax probabilities by the prior, as H-SAM does;
* hierarchical pixel decoder: output_upscaling (4x, C/8 ch), concatenated with ``up_embed``,
  skip_connect (two ConvTranspose x2 -> C/16 ch), 5-layer hypernetwork MLPs -> logits at 16g (= the
  input size for patch-16 backbones; otherwise bilinearly resized to image_size).

Deviations from H-SAM's code, all deliberate:

* Classes are not hard-coded (H-SAM's 224 path fixes 9 classes and g*g = 196 / 1024 via ``resize_``).
* The 224 path's GT-dependent class-wise noise and the Dropout(0.1) on msk_feat are left out (they
  need the labels inside the decoder and exist only in one of H-SAM's two variants).
* H-SAM softmaxes the K->1 map over its singleton channel dim (so the map is all ones and src
  becomes 2*src); here it is softmaxed over space, as the paper describes.
* The unused IoU head of decoder 2 and the ``attn.sum(-1) == N`` masking in Attention2 are dropped.
* Decoder 2 has no SAM counterpart and is randomly initialised (so is H-SAM's).

Outputs: ``forward`` in training mode returns ``{"low_res": B,K+1,4g,4g, "full": B,K+1,S,S}``; in eval
mode it returns one tensor B,K+1,S,S = :meth:`HSamDecoder.predict_logits` (average of both decoders'
logits at S, H-SAM's ``--stage 3``), so ``SegmentationModel.predict`` works unchanged.

How a runner trains it (the hooks needed):

1. Objective: ``SegmentationObjective`` cannot take the dict. Use ``HSamObjective(model,
   HSamLoss(num_classes, ce_weight, dice_weight))`` instead when the decoder is "hsam" (detect with
   ``getattr(model.decoder, "multi_output", False)`` or ``isinstance(model.decoder, HSamDecoder)``).
   It is called like SegmentationObjective: ``objective(images, labels)`` with labels B,S,S int64 at
   input resolution, returning ``{"loss", "loss1", "loss2", "weight"}`` (only "loss" carries grad).
2. Epoch: call ``objective.set_epoch(epoch)`` (0-based) at the start of every epoch, before its
   first step; the loss weight is w = 0.6 ** (0.99 ** epoch), total = (1 - w) * loss1 + w * loss2.
   On resume, call it with the resumed epoch.
3. Evaluation: nothing; ``model.eval()`` then ``model.predict`` / ``model(images)`` gives the stage-3
   average at full resolution. (``decoder.eval()`` also switches the embedding noise off.)
4. Checkpoints: decoder 2 is trainable, so ``weights_to_save`` already keeps ``decoder.mask_decoder2.*``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from samora_kit.api import ComponentConfig, hookimpl, lazy_exports

# the model code imports segment_anything: it loads when the decoder is built or one of these is first read
__getattr__ = lazy_exports(__name__, {".hsam_model": (
    "Attention2", "HSamDecoder", "HSamLoss", "HSamObjective", "HierarchicalMaskDecoder", "TwoWayAttentionBlock2",
    "TwoWayTransformer2", "CROSS_ATTN_DROPOUT", "HYPER_DEPTH", "SELF_ATTN_HEAD_CHOICES", "SELF_ATTN_MLP_DIM",
    "default_self_attn_heads", "hsam_loss_weight")})


class HSamDecoderConfig(ComponentConfig):
    transformer_depth: int = Field(2, ge=1)
    checkpoint: Literal["backbone"] | Path | None = "backbone"  # decoder 1 only, as samed
    embedding_noise: float = Field(0.2, ge=0)  # x (max - min) of the embedding, training only
    self_attn_heads: int | None = Field(None, ge=1)  # None: largest of 8, 7, 4, 2, 1 dividing g*g
    mlp_dim: int | None = Field(None, ge=1)  # both two-way transformers; None: samed's default


def build_hsam_decoder(config: HSamDecoderConfig, *, backbone, num_classes: int):
    """H-SAM's two-stage hierarchical decoder (SAMed decoder + prior-guided full-resolution decoder)."""
    from .hsam_model import build_hsam_decoder as build

    return build(config, backbone=backbone, num_classes=num_classes)


@hookimpl
def samora_kit_register(registry) -> None:
    registry.add("decoder", "hsam", HSamDecoderConfig, build_hsam_decoder, example={})
