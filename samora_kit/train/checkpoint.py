"""Training state as safetensors (no pickles): trainable weights, AdamW moments, position."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CheckpointError
from ..weights.io import load_weights, save_weights


def save_training_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        header: dict) -> Path:
    named = _trainable(model)
    index = {id(p): name for name, p in named.items()}
    tensors = {f"model/{name}": p for name, p in named.items()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                tensors[f"optim/{index[id(p)]}/{key}"] = torch.as_tensor(value)
    header = {**header, "kind": "training-state",
              "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]}
    return save_weights(path, tensors, header)


def load_training_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    tensors, header = load_weights(path)
    if header.get("kind") != "training-state":
        raise CheckpointError(f"{path}: not a samora-kit training state")
    named = _trainable(model)
    missing = [n for n in named if f"model/{n}" not in tensors]
    if missing:
        raise CheckpointError(f"{path}: made for another model; missing {missing[:3]}")
    with torch.no_grad():
        for name, p in named.items():
            saved = tensors[f"model/{name}"]
            if saved.shape != p.shape:
                raise CheckpointError(f"{path}: {name} has shape {tuple(saved.shape)}, "
                                      f"the model expects {tuple(p.shape)}")
            p.copy_(saved)
    by_name = {name: p for name, p in named.items()}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            name, state_key = key[len("optim/"):].rsplit("/", 1)
            optimizer.state[by_name[name]][state_key] = value.to(by_name[name].device)
    saved_names = [g.get("name") for g in header["param_groups"]]
    names = [g.get("name") for g in optimizer.param_groups]
    if saved_names != names:
        raise CheckpointError(f"{path}: its optimizer parameter groups {saved_names} differ from this run's {names}; "
                              "resume with the recipe and samora-kit version that made it, or start a new run")
    for group, saved in zip(optimizer.param_groups, header["param_groups"]):
        group.update({k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    return header


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}
