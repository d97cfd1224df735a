"""Patch-level teacher: an MAE ViT (timm VisionTransformer) plus an MAE decoder for continual pre-training.

Weights: the official `mae_pretrain_vit_large.pth` layout (facebookresearch/mae), `{"model": {...}}` with
`cls_token`, `pos_embed` (1, 1 + N, D), `patch_embed.proj.*`, `blocks.N.{norm1,attn.qkv,attn.proj,norm2,
mlp.fc1,mlp.fc2}.*`, `norm.*` — the key names of timm's VisionTransformer. The MAE decoder keys (`mask_token`,
`decoder_embed.*`, `decoder_pos_embed`, `decoder_blocks.N.*`, `decoder_norm.*`, `decoder_pred.*`, present in
MAE's "visualize" checkpoints and in our CPT files) load when the file has them; otherwise the decoder starts
from MAE's initialisation. Position embeddings of another grid are resampled (bicubic, class token kept).

Grid: forward returns B, S/16, S/16, D for 16-px patches on an S-px input, the same grid as SAM's image
encoder on that input, so token (i, j) of teacher and student both cover pixels [16i:16i+16, 16j:16j+16].
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import torch
from pydantic import Field, model_validator
from torch import nn

from .checkpoints import read_teacher_checkpoint
from .losses import normalized_patch_targets
from .teacher_base import FrozenTeacher, TeacherConfig
from .tokens import patchify

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # MAE was pre-trained on ImageNet-normalised inputs
IMAGENET_STD = (0.229, 0.224, 0.225)
DECODER_KEYS = ("mask_token", "decoder_")
EXPECTED = ("an MAE ViT checkpoint in the official layout (cls_token, pos_embed, patch_embed.proj.*, blocks.N.*, "
            "norm.*; optionally the decoder's mask_token, decoder_*) whose embed_dim, depth, num_heads, "
            "patch_size (and decoder sizes) match the config")


class MAETeacherConfig(TeacherConfig):
    """Defaults: ViT-L/16 with MAE's 512-wide, 8-block decoder, at 224 px."""

    image_size: int = Field(224, ge=16)  # must equal the SAM backbone's, so the token grids coincide
    patch_size: int = Field(16, ge=1)
    embed_dim: int = Field(1024, ge=1)
    depth: int = Field(24, ge=1)
    num_heads: int = Field(16, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    decoder_embed_dim: int = Field(512, ge=1)
    decoder_depth: int = Field(8, ge=1)
    decoder_num_heads: int = Field(16, ge=1)
    mask_ratio: float = Field(0.75, gt=0, lt=1)  # CPT
    norm_pix_loss: bool = True  # CPT target: each patch standardised (MAE's best setting)

    @model_validator(mode="after")
    def _shapes(self) -> "MAETeacherConfig":
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        for width, heads, what in ((self.embed_dim, self.num_heads, ""), (self.decoder_embed_dim,
                                   self.decoder_num_heads, "decoder_")):
            if width % heads:
                raise ValueError(f"{what}num_heads {heads} must divide {what}embed_dim {width}")
        return self


def sincos_pos_embed(dim: int, grid: int, cls_token: bool = True) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos position embedding: 1, (1 +) grid*grid, dim (class-token row zero)."""
    if dim % 4:
        raise ValueError(f"sin-cos position embeddings need a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                            indexing="ij")

    def embed_1d(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1) * omega[None]  # N, dim/4
        return torch.cat([out.sin(), out.cos()], dim=1)

    emb = torch.cat([embed_1d(xs), embed_1d(ys)], dim=1)  # N, dim (MAE's order: width coordinate first)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb])
    return emb.float()[None]


class MAEDecoder(nn.Module):
    """MAE's lightweight decoder; attribute names are the official checkpoint's."""

    def __init__(self, embed_dim: int, num_patches: int, patch_pixels: int, width: int, depth: int,
                 heads: int, mlp_ratio: float) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        norm = partial(nn.LayerNorm, eps=1e-6)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.decoder_embed = nn.Linear(embed_dim, width)
        grid = math.isqrt(num_patches)
        self.decoder_pos_embed = nn.Parameter(sincos_pos_embed(width, grid) if width % 4 == 0
                                              else torch.zeros(1, 1 + num_patches, width), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(Block(width, heads, mlp_ratio, qkv_bias=True, norm_layer=norm)
                                            for _ in range(depth))
        self.decoder_norm = norm(width)
        self.decoder_pred = nn.Linear(width, patch_pixels)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent B, 1 + L_visible, D (class token first); ids_restore B, N -> predicted patches B, N, p*p*3."""
        x = self.decoder_embed(latent)  # B, 1 + L, W
        b, n = ids_restore.shape
        fill = self.mask_token.expand(b, n + 1 - x.shape[1], -1)
        tokens = torch.cat([x[:, 1:], fill], dim=1)  # B, N, W in shuffled order
        tokens = torch.gather(tokens, 1, ids_restore[..., None].expand(-1, -1, x.shape[2]))  # row-major order
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]


class MAETeacher(FrozenTeacher):
    """Images B,3,S,S in [0, 1] -> last-layer token features B, S/p, S/p, D (class token dropped)."""

    expected_checkpoint = EXPECTED
    teacher_name = "mae_vit"

    def __init__(self, config: MAETeacherConfig) -> None:
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer  # timm is slow to import: only when built

        self.config = config
        self.image_size, self.patch_size, self.embed_dim = config.image_size, config.patch_size, config.embed_dim
        self.grid = config.image_size // config.patch_size
        self.vit = VisionTransformer(img_size=config.image_size, patch_size=config.patch_size,
                                     embed_dim=config.embed_dim, depth=config.depth, num_heads=config.num_heads,
                                     mlp_ratio=config.mlp_ratio, qkv_bias=True, num_classes=0,
                                     global_pool="token", norm_layer=partial(nn.LayerNorm, eps=1e-6))
        if config.embed_dim % 4 == 0:  # MAE's fixed sin-cos initialisation
            self.vit.pos_embed.data.copy_(sincos_pos_embed(config.embed_dim, self.grid))
        self.decoder = MAEDecoder(config.embed_dim, self.grid ** 2, config.patch_size ** 2 * 3,
                                  config.decoder_embed_dim, config.decoder_depth, config.decoder_num_heads,
                                  config.mlp_ratio)
        if config.checkpoint is not None:
            self.load_tensors(read_teacher_checkpoint(config.checkpoint, EXPECTED), Path(config.checkpoint))
        self.freeze()

    def check_images(self, images: torch.Tensor) -> None:
        expected = (3, self.image_size, self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"MAE teacher is built for images B,{','.join(map(str, expected))} in [0, 1]; got "
                             f"{tuple(images.shape)} (set the teacher's image_size to the backbone's)")

    @staticmethod
    def normalize(images: torch.Tensor) -> torch.Tensor:
        """[0, 1] -> ImageNet mean/std normalised, MAE's input convention."""
        mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        return (images - mean) / std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.check_images(images)
        self.ensure_eval()
        tokens = self.vit.forward_features(self.normalize(images))  # B, 1 + N, D
        tokens = tokens[:, self.vit.num_prefix_tokens:]  # B, N, D in row-major patch order
        return tokens.reshape(images.shape[0], self.grid, self.grid, -1)  # B, g, g, D

    def cpt_tensors(self) -> dict[str, torch.Tensor]:
        """Encoder and decoder in the official MAE key layout, loadable as this teacher's checkpoint."""
        return {**self.vit.state_dict(), **self.decoder.state_dict()}

    def load_tensors(self, tensors: dict[str, torch.Tensor], source: Path) -> None:
        decoder = {k: v for k, v in tensors.items() if k.startswith(DECODER_KEYS)}
        encoder = {k: v for k, v in tensors.items() if not k.startswith(DECODER_KEYS)}
        self._load_checked(self.vit, encoder, source, fit=self._fit_pos_embed)
        if decoder:  # official encoder-only files leave the decoder at its initialisation
            self._load_checked(self.decoder, decoder, source, fit=self._fit_pos_embed)

    def _fit_pos_embed(self, key: str, tensor: torch.Tensor, want: torch.Size) -> torch.Tensor | None:
        """A checkpoint trained at another image size: resample its position-embedding grid to ours."""
        if key not in ("pos_embed", "decoder_pos_embed") or tensor.dim() != 3 or tensor.shape[2] != want[2]:
            return None
        old = math.isqrt(tensor.shape[1] - 1)
        if old * old != tensor.shape[1] - 1:
            return None
        from timm.layers import resample_abs_pos_embed

        return resample_abs_pos_embed(tensor.float(), [self.grid, self.grid], [old, old], num_prefix_tokens=1)

    def cpt_objective(self) -> "MAECPT":
        """MAE's masked-autoencoding objective; trains this teacher's encoder and decoder in place."""
        return MAECPT(self)


class MAECPT(nn.Module):
    """Continual pre-training: images B,3,S,S in [0, 1] -> {"loss": MSE on the masked patches}."""

    def __init__(self, teacher: MAETeacher) -> None:
        super().__init__()
        self.vit, self.decoder = teacher.vit, teacher.decoder  # shared: training updates the teacher
        object.__setattr__(self, "_teacher", teacher)  # not a submodule: its train() stays eval
        self.requires_grad_(True)
        self.vit.pos_embed.requires_grad_(False)  # fixed sin-cos in MAE, kept fixed here
        self.decoder.decoder_pos_embed.requires_grad_(False)
        self.train()

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        teacher, cfg = self._teacher, self._teacher.config
        teacher.check_images(images)
        x = teacher.normalize(images)
        tokens = self.vit.patch_embed(x) + self.vit.pos_embed[:, 1:]  # B, N, D
        b, n, d = tokens.shape
        keep = int(n * (1 - cfg.mask_ratio))
        ids_shuffle = torch.rand(b, n, device=x.device).argsort(dim=1)  # global RNG, as the views
        ids_restore = ids_shuffle.argsort(dim=1)
        visible = torch.gather(tokens, 1, ids_shuffle[:, :keep, None].expand(-1, -1, d))  # B, keep, D
        mask = torch.ones(b, n, device=x.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)  # B, N in row-major order, 1 = masked
        cls = (self.vit.cls_token + self.vit.pos_embed[:, :1]).expand(b, -1, -1)
        latent = self.vit.norm(self.vit.blocks(torch.cat([cls, visible], dim=1)))  # B, 1 + keep, D
        pred = self.decoder(latent, ids_restore)  # B, N, p*p*3
        target = patchify(x, cfg.patch_size).flatten(1, 2)  # B, N, p*p*3
        if cfg.norm_pix_loss:
            target = normalized_patch_targets(target)
        per_patch = (pred - target).pow(2).mean(dim=-1)  # B, N
        loss = (per_patch * mask).sum() / mask.sum()
        return {"loss": loss, "mae": loss.detach()}


def build_mae_teacher(config: MAETeacherConfig) -> MAETeacher:
    """MAE ViT teacher (default ViT-L/16 at 224 px), frozen; CPT objective masked autoencoding."""
    return MAETeacher(config)


def register(registry) -> None:
    registry.add("teacher", "mae_vit", MAETeacherConfig, build_mae_teacher,
                 example={"image_size": 64, "embed_dim": 64, "depth": 2, "num_heads": 2,
                          "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2})
