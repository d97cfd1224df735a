"""Training state as safetensors (no pickles): trainable weights, AdamW moments, position, the last
step's loss, and the random number generators' states (torch CPU and CUDA, numpy, Python), so that a
resumed run draws what the uninterrupted one would have (pretext tasks draw their masks, noise and
views from them)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError
from ..weights.io import load_weights, save_weights


def save_training_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        header: dict, loss: torch.Tensor | None = None) -> Path:
    """`loss` (the last step's, on the device) travels as a tensor: saving reads it with the weights,
    with no read of its own."""
    named = _trainable(model)
    index = {id(p): name for name, p in named.items()}
    tensors = {f"model/{name}": p for name, p in named.items()}
    if loss is not None:
        tensors["loss"] = loss.detach().float().reshape(())
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                tensors[f"optim/{index[id(p)]}/{key}"] = torch.as_tensor(value)
    rng_tensors, rng_header = _rng_state()
    tensors.update(rng_tensors)
    header = {**header, "kind": "training-state", "rng": rng_header,
              "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]}
    return save_weights(path, tensors, header)


def load_training_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore the state into `model` and `optimizer`; returns its header, with `loss` when it was saved."""
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
        if key.startswith("optim/"):  # (rng/* are restored below)
            name, state_key = key[len("optim/"):].rsplit("/", 1)
            optimizer.state[by_name[name]][state_key] = value.to(by_name[name].device)
    saved_names = [g.get("name") for g in header["param_groups"]]
    names = [g.get("name") for g in optimizer.param_groups]
    if saved_names != names:
        raise CheckpointError(f"{path}: its optimizer parameter groups {saved_names} differ from this run's {names}; "
                              "resume with the recipe and samora-kit version that made it, or start a new run")
    for group, saved in zip(optimizer.param_groups, header["param_groups"]):
        group.update({k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    if "rng" in header:
        _set_rng_state(tensors, header["rng"])
    if "loss" in tensors:
        header["loss"] = float(tensors["loss"])
    return header


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """The global generators' states as tensors plus the few scalars that go in the header."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    tensors = {"rng/torch": torch.get_rng_state(), "rng/numpy": torch.from_numpy(np_keys.astype(np.int64)),
               "rng/python": torch.tensor(py_state, dtype=torch.int64)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = state
    header = {"numpy": [np_kind, int(np_pos), int(np_has_gauss), float(np_gauss)],
              "python": [py_version, py_gauss]}
    return tensors, header


def _set_rng_state(tensors: dict[str, torch.Tensor], header: dict) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    kind, pos, has_gauss, gauss = header["numpy"]
    np.random.set_state((kind, tensors["rng/numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_gauss = header["python"]
    random.setstate((version, tuple(int(x) for x in tensors["rng/python"].tolist()), py_gauss))
    cuda = sorted((k for k in tensors if k.startswith("rng/cuda/")), key=lambda k: int(k.rsplit("/", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda][:torch.cuda.device_count()])


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}
