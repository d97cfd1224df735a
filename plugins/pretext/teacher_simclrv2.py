"""Image-level teacher: a SimCLRv2 ResNet (+SK) with its projection head; CPT = SimCLR's NT-Xent.

Weights: the official TF checkpoints converted to PyTorch by Separius/SimCLRv2-Pytorch (`convert.py`
writes `torch.save({"resnet": resnet.state_dict(), "head": head.state_dict()}, "r50_2x_sk1.pth")`). Such a
`.pth` loads as is (read with weights_only=True, flattened to `resnet.*` / `head.*`); a `.safetensors` must use
the flattened names, e.g. `resnet.net.0.0.weight` (stem conv), `resnet.net.1.blocks.0.net.2.main_conv.0.weight`
(SK conv), `head.layers.0.weight`. `resnet.fc.*` (the supervised ImageNet classifier) is ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from .augment import ViewAugmentConfig, random_view
from .checkpoints import read_teacher_checkpoint
from .losses import nt_xent
from .resnet import ContrastiveHead, SimCLRv2ResNet
from .teacher_base import FrozenTeacher, TeacherConfig

EXPECTED = ("a SimCLRv2 ResNet converted with Separius/SimCLRv2-Pytorch ({'resnet': state dict, 'head': state "
            "dict} in a .pth, or the same keys flattened as resnet.* / head.* in a .safetensors) whose depth, "
            "width_multiplier, selective_kernel and projection_dim match the config")


class SimCLRv2TeacherConfig(TeacherConfig):
    """Defaults: the paper's teacher, ResNet-50 2x with selective kernels (r50_2x_sk1)."""

    depth: Literal[18, 34, 50, 101, 152, 200] = 50  # 18/34: basic blocks (tests, demos); >= 50: bottlenecks
    width_multiplier: Literal[1, 2, 3] = 2
    selective_kernel: bool = True
    projection_dim: int = Field(128, ge=1)  # SimCLRv2's head output
    head_layers: int = Field(3, ge=1)
    # what forward() returns and the image task distils: the pooled ResNet features (default; SimCLR's
    # linear-eval/transfer representation, richer than the head output, which is trained to discard
    # augmentation-variant information such as intensity and scale), or the head's projection
    features: Literal["pooled", "projection"] = "pooled"
    temperature: float = Field(0.1, gt=0)  # NT-Xent, as SimCLRv2
    augment: ViewAugmentConfig = Field(default_factory=ViewAugmentConfig)


class SimCLRv2Teacher(FrozenTeacher):
    """Images B,3,H,W in [0, 1] (SimCLR's own input range: no mean/std normalisation) -> B, embed_dim."""

    expected_checkpoint = EXPECTED
    teacher_name = "simclrv2_resnet"

    def __init__(self, config: SimCLRv2TeacherConfig) -> None:
        super().__init__()
        self.config = config
        self.resnet = SimCLRv2ResNet(config.depth, config.width_multiplier, config.selective_kernel)
        self.head = ContrastiveHead(self.resnet.channels_out, config.projection_dim, config.head_layers)
        self.embed_dim = self.resnet.channels_out if config.features == "pooled" else config.projection_dim
        if config.checkpoint is not None:
            self.load_tensors(read_teacher_checkpoint(config.checkpoint, EXPECTED), Path(config.checkpoint))
        self.freeze()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"SimCLRv2 teacher expects images B,3,H,W in [0, 1]; got {tuple(images.shape)}")
        self.ensure_eval()
        pooled = self.resnet(images)  # B, C
        return pooled if self.config.features == "pooled" else self.head(pooled)

    def cpt_tensors(self) -> dict[str, torch.Tensor]:
        """`resnet.*` and `head.*`: the flattened Separius layout, loadable as this teacher's checkpoint."""
        return dict(self.state_dict())

    def load_tensors(self, tensors: dict[str, torch.Tensor], source: Path) -> None:
        self._load_checked(self, tensors, source, ignore=("resnet.fc.",))

    def cpt_objective(self) -> "SimCLRv2CPT":
        """NT-Xent on two random views; trains this teacher's ResNet and head in place."""
        return SimCLRv2CPT(self.resnet, self.head, self.config.temperature, self.config.augment)


class SimCLRv2CPT(nn.Module):
    """Continual pre-training objective: images B,3,H,W in [0, 1] -> {"loss": NT-Xent}."""

    def __init__(self, resnet: SimCLRv2ResNet, head: ContrastiveHead, temperature: float,
                 augment: ViewAugmentConfig) -> None:
        super().__init__()
        self.resnet, self.head = resnet, head  # the teacher's own modules: CPT updates the teacher
        self.temperature, self.augment = temperature, augment
        self.requires_grad_(True)
        self.train()

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        views = torch.cat([random_view(images, self.augment), random_view(images, self.augment)])  # 2B, 3, H, W
        z1, z2 = self.head(self.resnet(views)).chunk(2)  # BatchNorm statistics over both views, as SimCLR
        loss = nt_xent(z1, z2, self.temperature)
        return {"loss": loss, "nt_xent": loss.detach()}


def build_simclrv2_teacher(config: SimCLRv2TeacherConfig) -> SimCLRv2Teacher:
    """SimCLRv2 ResNet teacher (default r50 2x SK), frozen; CPT objective NT-Xent."""
    return SimCLRv2Teacher(config)


def register(registry) -> None:
    registry.add("teacher", "simclrv2_resnet", SimCLRv2TeacherConfig, build_simclrv2_teacher,
                 example={"depth": 18, "width_multiplier": 1, "selective_kernel": False})
