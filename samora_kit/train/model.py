"""Backbone + decoder assembled from a recipe; the same objects the Python API builds."""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from pydantic import BaseModel

from ..errors import SamoraError
from ..interfaces import UnlabelledSource
from ..registry import Registry


class SegmentationModel(torch.nn.Module):
    def __init__(self, backbone: torch.nn.Module, decoder: torch.nn.Module):
        super().__init__()
        self.backbone, self.decoder = backbone, decoder
        self.image_size = backbone.image_size
        self.num_classes = decoder.num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """B,3,S,S in [0, 1] -> low-resolution logits B,K+1,4g,4g."""
        return self.decoder(self.backbone(images))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Label maps B,S,S at input resolution."""
        logits = self(images).float()
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits.argmax(dim=1)

    def weights_to_save(self) -> dict[str, torch.Tensor]:
        """Trainable tensors, plus the frozen base when it came from no file (random init)."""
        keep_all = self.backbone.checkpoint_path is None
        return {n: p.detach() for n, p in self.named_parameters() if keep_all or p.requires_grad}


class SegmentationObjective(torch.nn.Module):
    """What the loop trains for segmentation: logits at 4x the grid vs nearest-downsampled labels."""

    def __init__(self, model: SegmentationModel, loss: torch.nn.Module):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.model(images)
        low_res = F.interpolate(labels[:, None].float(), size=logits.shape[-2:], mode="nearest")
        return self.loss(logits.float(), low_res[:, 0].long())


def build_model(recipe: BaseModel, registry: Registry, num_classes: int) -> SegmentationModel:
    """The recipe's backbone, then its decoder initialised from its own seed (derived from run.seed),
    so models that differ only in the encoder (SAMed, SAMora, decoder only) start from the same decoder."""
    backbone = build_backbone(recipe, registry)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(component_seed(recipe.run.seed, "decoder"))
        decoder = registry.get("decoder", recipe.decoder.name).build(recipe.decoder, backbone=backbone,
                                                                     num_classes=num_classes)
    return SegmentationModel(backbone, decoder)


def build_backbone(recipe: BaseModel, registry: Registry):
    """The recipe's backbone, given its fuser when the recipe has one (stage 2)."""
    context = {}
    fuser = getattr(recipe, "fuser", None)
    if fuser is not None:
        spec = registry.get("fuser", fuser.name)
        context["fuser"] = lambda dim, num_heads, expert_names: spec.build(
            fuser, dim=dim, num_heads=num_heads, expert_names=expert_names)
    return registry.get("backbone", recipe.backbone.name).build(recipe.backbone, **context)


def component_seed(seed: int, component: str) -> int:
    """A seed for one component's initialisation, independent of what other components drew."""
    digest = hashlib.sha256(f"{seed}:{component}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def build_dataset(recipe: BaseModel, registry: Registry):
    return registry.get("dataset", recipe.data.name).build(recipe.data)


def build_unlabelled_source(recipe: BaseModel, registry: Registry) -> UnlabelledSource:
    """The image source of a pre-training recipe; an adapter of labelled volumes is refused."""
    adapter = build_dataset(recipe, registry)
    if not isinstance(adapter, UnlabelledSource):
        raise SamoraError(f"data.name = {recipe.data.name!r} gives labelled volumes; self-supervised "
                          "pre-training needs an unlabelled image source such as 'unlabelled_pool'")
    return adapter
