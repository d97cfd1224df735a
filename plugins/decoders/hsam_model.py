"""H-SAM's decoder, its loss and objective: the model code behind the `hsam` decoder (hsam.py describes it
and registers it; importing this module imports segment_anything)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d, MLPBlock
from segment_anything.modeling.mask_decoder import MLP
from segment_anything.modeling.transformer import Attention
from torch import Tensor, nn

from samora_kit.api import DiceCELoss, FeaturePyramid, embedding_of

from .hsam import HSamDecoderConfig
from .samed import SamedDecoder, default_mlp_dim, default_num_heads, pretrained_decoder_file

SELF_ATTN_HEAD_CHOICES = (8, 7, 4, 2, 1)
SELF_ATTN_MLP_DIM = 2048  # H-SAM's MLPBlock(HW, 2048)
HYPER_DEPTH = 5  # H-SAM's decoder-2 hypernetwork depth
CROSS_ATTN_DROPOUT = 0.2  # H-SAM's TwoWayAttentionBlock2 dropout on the token->image output


def default_self_attn_heads(grid: int) -> int:
    return next(h for h in SELF_ATTN_HEAD_CHOICES if (grid * grid) % h == 0)


def hsam_loss_weight(epoch: int) -> float:
    """Decoder-2 weight w = 0.6 ** (0.99 ** epoch): 0.60 at 0, 0.68 at 29, 0.83 at 99, 0.975 at 299."""
    return 0.6 ** (0.99 ** epoch)


class Attention2(Attention):
    """SAM's Attention whose softmax probabilities are multiplied by a prior (no renormalisation).

    prior: B,T,N (class-softmaxed mask over the N image positions, T tokens). Query length T ->
    token->image (probabilities B,h,T,N * prior); query length N -> image->token (x prior^T)."""

    def forward(self, q: Tensor, k: Tensor, v: Tensor, prior: Tensor | None = None) -> Tensor:  # type: ignore[override]
        q = self._separate_heads(self.q_proj(q), self.num_heads)
        k = self._separate_heads(self.k_proj(k), self.num_heads)
        v = self._separate_heads(self.v_proj(v), self.num_heads)
        attn = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # B, h, Nq, Nk
        attn = attn.softmax(dim=-1)
        if prior is not None:
            if attn.shape[-2:] == prior.shape[-2:]:
                attn = attn * prior.unsqueeze(1)
            elif attn.shape[-2:] == prior.shape[-2:][::-1]:
                attn = attn * prior.transpose(-2, -1).unsqueeze(1)
            else:
                raise ValueError(f"prior {tuple(prior.shape)} fits neither attention shape {tuple(attn.shape)}")
        out = self._recombine_heads(attn @ v)
        return self.out_proj(out)


class TwoWayAttentionBlock2(nn.Module):
    """SAM's TwoWayAttentionBlock with prior-weighted cross-attention (both directions, full width)."""

    def __init__(self, embedding_dim: int, num_heads: int, mlp_dim: int, skip_first_layer_pe: bool = False,
                 activation: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention2(embedding_dim, num_heads)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention2(embedding_dim, num_heads)
        self.skip_first_layer_pe = skip_first_layer_pe
        self.dropout = nn.Dropout(CROSS_ATTN_DROPOUT)

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor,
                prior: Tensor) -> tuple[Tensor, Tensor]:
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.dropout(self.cross_attn_token_to_image(q=q, k=k, v=keys, prior=prior)))
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)
        queries = self.norm3(queries + self.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(q=k, k=q, v=queries, prior=prior))
        return queries, keys


class TwoWayTransformer2(nn.Module):
    """SAM's TwoWayTransformer built from TwoWayAttentionBlock2; final token->image attention is plain."""

    def __init__(self, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int,
                 attention_downsample_rate: int = 2) -> None:
        super().__init__()
        self.depth, self.embedding_dim, self.num_heads, self.mlp_dim = depth, embedding_dim, num_heads, mlp_dim
        self.layers = nn.ModuleList(TwoWayAttentionBlock2(embedding_dim, num_heads, mlp_dim, skip_first_layer_pe=i == 0)
                                    for i in range(depth))
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate=attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor,
                prior: Tensor) -> tuple[Tensor, Tensor]:
        keys = image_embedding.flatten(2).transpose(1, 2)  # B, N, C
        image_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, image_pe, prior)
        attn_out = self.final_attn_token_to_image(q=queries + point_embedding, k=keys + image_pe, v=keys)
        return self.norm_final_attn(queries + attn_out), keys


class HierarchicalMaskDecoder(nn.Module):
    """H-SAM's MaskDecoder2: mask-guided self-attention, prior-weighted two-way transformer,
    hierarchical pixel decoder (16x the embedding grid)."""

    def __init__(self, num_classes: int, channels: int, grid: int, transformer_depth: int, mlp_dim: int,
                 num_heads: int, self_attn_heads: int) -> None:
        super().__init__()
        if channels % 16:
            raise ValueError(f"the hierarchical pixel decoder needs channels divisible by 16, got {channels}")
        if channels % num_heads:
            raise ValueError(f"num_heads {num_heads} must divide the embedding width ({channels})")
        hw = grid * grid
        if hw % self_attn_heads:
            raise ValueError(f"self_attn_heads {self_attn_heads} must divide the embedding grid area {hw} "
                             f"({grid}x{grid})")
        n_tokens = num_classes + 1
        self.num_mask_tokens = n_tokens
        self.mask_tokens = nn.Embedding(n_tokens, channels)
        self.transformer2 = TwoWayTransformer2(transformer_depth, channels, num_heads, mlp_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(channels, channels // 4, kernel_size=2, stride=2), LayerNorm2d(channels // 4), nn.GELU(),
            nn.ConvTranspose2d(channels // 4, channels // 8, kernel_size=2, stride=2), nn.GELU())
        self.skip_connect = nn.Sequential(  # input: own C/8 upscale + decoder 1's C/8 upscale
            nn.ConvTranspose2d(channels // 4, channels // 8, kernel_size=2, stride=2), LayerNorm2d(channels // 8),
            nn.GELU(),
            nn.ConvTranspose2d(channels // 8, channels // 16, kernel_size=2, stride=2), LayerNorm2d(channels // 16),
            nn.GELU())
        self.output_hypernetworks_mlps2 = nn.ModuleList(MLP(channels, channels, channels // 16, HYPER_DEPTH)
                                                        for _ in range(n_tokens))
        self.self_attn = Attention(hw, self_attn_heads)
        self.norm1 = nn.LayerNorm(hw)
        self.self_attn2 = Attention(hw, self_attn_heads)
        self.norm2 = nn.LayerNorm(hw)
        self.mlp = MLPBlock(hw, SELF_ATTN_MLP_DIM)
        self.med_sel = nn.Sequential(nn.Linear(n_tokens, 1), nn.ReLU())

    def spatial_map(self, msk_feat: Tensor) -> Tensor:
        """Class-balanced mask-guided self-attention: B,K+1,g*g -> B,1,g*g (softmax over space)."""
        x = self.norm1(self.self_attn(q=msk_feat, k=msk_feat, v=msk_feat))
        x = self.self_attn2(q=x, k=x, v=x)
        x = self.norm2(x + self.mlp(x))
        x = self.med_sel(x.transpose(1, 2)).transpose(1, 2)  # B, 1, g*g
        return x.softmax(dim=-1)

    def forward(self, src: Tensor, pos: Tensor, prior: Tensor, msk_feat: Tensor, up_embed: Tensor) -> Tensor:
        """src (embedding + dense prompt) B,C,g,g; pos B,C,g,g; prior B,K+1,g*g (class-softmaxed);
        msk_feat B,K+1,g*g; up_embed B,C/8,4g,4g -> logits B,K+1,16g,16g."""
        b, c, g, _ = src.shape
        src = src + src * self.spatial_map(msk_feat).view(b, 1, g, g)
        tokens = self.mask_tokens.weight.unsqueeze(0).expand(b, -1, -1)
        hs, keys = self.transformer2(src, pos, tokens, prior)
        upscaled = self.output_upscaling(keys.transpose(1, 2).reshape(b, c, g, g))
        upscaled = self.skip_connect(torch.cat([upscaled, up_embed], dim=1))  # B, C/16, 16g, 16g
        hyper = torch.stack([mlp(hs[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps2)], dim=1)
        h, w = upscaled.shape[-2:]
        return (hyper @ upscaled.flatten(2)).view(b, -1, h, w)


class HSamDecoder(nn.Module):
    """Embedding B,C,g,g -> training: {"low_res": B,K+1,4g,4g, "full": B,K+1,S,S};
    eval: B,K+1,S,S (average of both decoders, H-SAM's test stage 3)."""

    multi_output = True  # forward returns a dict in training: needs HSamObjective

    def objective(self, model: nn.Module, ce_weight: float, dice_weight: float) -> "HSamObjective":
        """What the training loop optimises for a model with this decoder (H-SAM's two-decoder loss)."""
        return HSamObjective(model, HSamLoss(self.num_classes, ce_weight, dice_weight))

    def __init__(self, num_classes: int, channels: int, grid: int, image_size: int, transformer_depth: int = 2,
                 mlp_dim: int | None = None, embedding_noise: float = 0.2, self_attn_heads: int | None = None) -> None:
        super().__init__()
        self.decoder1 = SamedDecoder(num_classes, channels, grid, image_size, transformer_depth, mlp_dim)
        self.mask_decoder2 = HierarchicalMaskDecoder(
            num_classes, channels, grid, transformer_depth, mlp_dim or default_mlp_dim(channels),
            default_num_heads(channels), self_attn_heads or default_self_attn_heads(grid))
        self.num_classes = num_classes
        self.embed_grid, self.image_size = grid, image_size
        self.embedding_noise = embedding_noise

    def decode1(self, embedding: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Decoder 1 (SAMed): low-res logits B,K+1,4g,4g, msk_feat B,K+1,g*g, up_embed B,C/8,4g,4g."""
        d1 = self.decoder1
        b, c, g, _ = embedding.shape
        if (c, g) != (d1.prompt_encoder.embed_dim, self.embed_grid) or embedding.shape[3] != g:
            raise ValueError(f"decoder expects embeddings B,{d1.prompt_encoder.embed_dim},{self.embed_grid},"
                             f"{self.embed_grid}; got {tuple(embedding.shape)}")
        md = d1.mask_decoder
        tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0).unsqueeze(0).expand(b, -1, -1)
        hs, src = md.transformer(self.dense_input(embedding), self.dense_pe(b), tokens)  # B,1+K+1,C ; B,g*g,C
        mask_tokens_out = hs[:, 1:1 + md.num_mask_tokens]  # B, K+1, C
        msk_feat = mask_tokens_out @ src.transpose(1, 2)  # B, K+1, g*g
        up_embed = md.output_upscaling(src.transpose(1, 2).reshape(b, c, g, g))
        hyper = torch.stack([mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(md.output_hypernetworks_mlps)], dim=1)
        h, w = up_embed.shape[-2:]
        return (hyper @ up_embed.flatten(2)).view(b, -1, h, w), msk_feat, up_embed

    def dense_input(self, embedding: Tensor) -> Tensor:
        c = embedding.shape[1]
        return embedding + self.decoder1.prompt_encoder.no_mask_embed.weight.reshape(1, c, 1, 1)

    def dense_pe(self, b: int) -> Tensor:
        return self.decoder1.prompt_encoder.get_dense_pe().expand(b, -1, -1, -1)

    def prior_from(self, low_res: Tensor) -> Tensor:
        """Decoder-1 logits -> class-softmaxed prior B,K+1,g*g at the embedding grid."""
        g = self.embed_grid
        return F.interpolate(low_res, size=(g, g), mode="bilinear", align_corners=False).softmax(dim=1).flatten(2)

    def decode2(self, embedding: Tensor, prior: Tensor, msk_feat: Tensor, up_embed: Tensor) -> Tensor:
        """Decoder 2 on an embedding (noise applied in training) -> logits B,K+1,S,S."""
        if self.training and self.embedding_noise > 0:
            spread = (embedding.max() - embedding.min()).detach()
            embedding = embedding + torch.randn_like(embedding) * self.embedding_noise * spread
        out = self.mask_decoder2(self.dense_input(embedding), self.dense_pe(embedding.shape[0]), prior, msk_feat,
                                 up_embed)
        return self.to_image_size(out)

    def to_image_size(self, logits: Tensor) -> Tensor:
        s = self.image_size
        if logits.shape[-2:] == (s, s):
            return logits
        return F.interpolate(logits, size=(s, s), mode="bilinear", align_corners=False)

    def forward_both(self, embedding: Tensor) -> dict[str, Tensor]:
        low_res, msk_feat, up_embed = self.decode1(embedding)
        full = self.decode2(embedding, self.prior_from(low_res), msk_feat, up_embed)
        return {"low_res": low_res, "full": full}

    def predict_logits(self, embedding: Tensor) -> Tensor:
        """Average of both decoders' logits at the input resolution (H-SAM --stage 3)."""
        out = self.forward_both(embedding)
        return (self.to_image_size(out["low_res"]) + out["full"]) / 2

    def forward(self, features: Tensor | FeaturePyramid) -> dict[str, Tensor] | Tensor:
        embedding = embedding_of(features)  # a SAM2 pyramid's finer levels are not used by H-SAM
        if self.training:
            return self.forward_both(embedding)
        return self.predict_logits(embedding)

    def load_pretrained(self, path: Path) -> None:
        """SAM's prompt encoder + mask decoder into decoder 1 (samed's rules); decoder 2 stays random."""
        self.decoder1.load_pretrained(path)


class HSamLoss(nn.Module):
    """total = (1 - w) * loss1 + w * loss2, w = 0.6 ** (0.99 ** epoch); each ce*CE + dice*Dice.

    loss1: decoder-1 low-res logits vs nearest-downsampled labels; loss2: full-res logits vs labels."""

    def __init__(self, num_classes: int, ce_weight: float = 0.1, dice_weight: float = 0.9) -> None:
        super().__init__()
        self.criterion = DiceCELoss(num_classes, ce_weight=ce_weight, dice_weight=dice_weight)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def weight(self) -> float:
        return hsam_loss_weight(self.epoch)

    def forward(self, outputs: dict[str, Tensor], labels: Tensor) -> dict[str, Tensor]:
        # outputs: {"low_res": B,K+1,h,w, "full": B,K+1,H,W}; labels: B,S,S int64
        def at(size):
            if labels.shape[-2:] == size:
                return labels.long()
            return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()

        low, full = outputs["low_res"].float(), outputs["full"].float()
        loss1 = self.criterion(low, at(low.shape[-2:]))["loss"]
        loss2 = self.criterion(full, at(full.shape[-2:]))["loss"]
        w = self.weight
        return {"loss": (1 - w) * loss1 + w * loss2, "loss1": loss1.detach(), "loss2": loss2.detach(),
                "weight": torch.tensor(w)}


class HSamObjective(nn.Module):
    """Drop-in for SegmentationObjective with an hsam decoder: images, labels (B,S,S) -> loss dict."""

    def __init__(self, model: nn.Module, loss: HSamLoss):
        super().__init__()
        self.model, self.loss = model, loss

    def set_epoch(self, epoch: int) -> None:
        self.loss.set_epoch(epoch)

    def forward(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        outputs = self.model(images)
        if not isinstance(outputs, dict):
            raise RuntimeError("HSamObjective needs the model in training mode (the decoder returns a dict)")
        return self.loss(outputs, labels)


def build_hsam_decoder(config: HSamDecoderConfig, *, backbone, num_classes: int) -> HSamDecoder:
    """H-SAM's two-stage hierarchical decoder (SAMed decoder + prior-guided full-resolution decoder)."""
    decoder = HSamDecoder(num_classes, backbone.embed_channels, backbone.embed_grid, backbone.image_size,
                          config.transformer_depth, config.mlp_dim, config.embedding_noise, config.self_attn_heads)
    path = pretrained_decoder_file(config.checkpoint, backbone)
    if path is not None:
        decoder.load_pretrained(path)
    return decoder
