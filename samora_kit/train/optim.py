"""The optimizer (`train.optimizer`), one parameter group per part that the recipe gives its own learning rate."""

from __future__ import annotations

import torch

from ..errors import SamoraError
from ..interfaces import ParameterGroups

FUSER_LR_FACTOR = 0.3  # train.fuser_lr defaults to this x train.lr (docs/decisions.md: how it was chosen)
MAIN = "main"  # every trainable parameter no module claims: the decoder, a pretext head; lr = train.lr
RECIPE_KEYS = {MAIN: "lr", "fuser": "fuser_lr", "lora": "lora_lr"}
FUSED_DEVICES = ("cpu", "cuda")  # where torch's fused AdamW kernel runs
FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def group_lrs(train_cfg) -> dict[str, float]:
    """Base learning rate of each group, defaults filled in."""
    return {MAIN: train_cfg.lr,
            "fuser": train_cfg.fuser_lr if train_cfg.fuser_lr is not None else FUSER_LR_FACTOR * train_cfg.lr,
            "lora": train_cfg.lora_lr if train_cfg.lora_lr is not None else train_cfg.lr}


def build_optimizer(objective: torch.nn.Module, train_cfg) -> torch.optim.Optimizer:
    """`train.optimizer` (AdamW, or SGD with Nesterov momentum) over `objective`'s trainable parameters,
    grouped by the ParameterGroups modules inside it. Each group carries `name` and `base_lr` (its peak lr)."""
    claimed: dict[int, str] = {}
    for module in objective.modules():
        if not isinstance(module, ParameterGroups):
            continue
        for group, params in module.parameter_groups().items():
            if group not in RECIPE_KEYS or group == MAIN:
                raise SamoraError(f"{type(module).__name__}.parameter_groups() names group {group!r}; groups with "
                                  f"their own lr are {', '.join(k for k in RECIPE_KEYS if k != MAIN)}")
            for p in params:
                claimed.setdefault(id(p), group)
    members: dict[str, list[torch.nn.Parameter]] = {name: [] for name in RECIPE_KEYS}
    for p in objective.parameters():
        if p.requires_grad:
            members[claimed.get(id(p), MAIN)].append(p)
    lrs = group_lrs(train_cfg)
    groups = [{"params": params, "name": name, "base_lr": lrs[name], "lr": lrs[name]}
              for name, params in members.items() if params]
    if not groups:
        raise SamoraError("nothing to train: no parameter of the model requires a gradient")
    if train_cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=train_cfg.lr, momentum=0.9, nesterov=True,
                               weight_decay=train_cfg.weight_decay)
    # one fused kernel for every tensor: on CUDA no host reads, on the CPU 10x faster than the per-tensor loop
    # that torch picks there by default (benchmarks/samora_benchmarks/optimizer.py)
    fused = all(p.device.type in FUSED_DEVICES and p.dtype in FUSED_DTYPES for group in groups for p in group["params"])
    return torch.optim.AdamW(groups, lr=train_cfg.lr, betas=train_cfg.betas, weight_decay=train_cfg.weight_decay,
                             fused=fused or None)


def lr_metric(group_name: str) -> str:
    """metrics.jsonl key of a group's current lr: `lr` for the main group, `lr_fuser`, `lr_lora`."""
    return "lr" if group_name == MAIN else f"lr_{group_name}"
