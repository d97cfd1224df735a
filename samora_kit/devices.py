"""Where a finished model runs and in what precision: --device and --precision of evaluate, predict, explain."""

from __future__ import annotations

import re
from contextlib import AbstractContextManager

import torch

from .errors import SamoraError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # name -> autocast dtype (None: off)
DEVICE_HELP = "auto (cuda when available, else cpu), cpu, cuda or cuda:N"


def resolve_device(name: str, flag: str = "--device") -> torch.device:
    """'auto', 'cpu', 'cuda' or 'cuda:N' as a device that is here (a CUDA one with its index);
    a device that is not here is refused, naming `flag` and what is available."""
    key = name.strip().lower()
    found = re.fullmatch(r"auto|cpu|cuda(?::(\d+))?", key)
    if found is None:
        raise SamoraError(f"{flag} {name!r}: expected {DEVICE_HELP}")
    if key == "cpu" or (key == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = f"with CUDA {torch.version.cuda}" if torch.version.cuda else "without CUDA"
        raise SamoraError(f"{flag} {name}: no CUDA device is available on this machine (torch {torch.__version__}, "
                          f"built {build}, sees none); available: {', '.join(available_devices())}")
    index = torch.cuda.current_device() if found.group(1) is None else int(found.group(1))  # auto, cuda
    if index >= torch.cuda.device_count():
        raise SamoraError(f"{flag} {name}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                          f"available: {', '.join(available_devices())}")
    return torch.device("cuda", index)


def available_devices() -> list[str]:
    """What --device accepts on this machine."""
    cuda = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return ["auto", "cpu", *cuda]


def inference_dtype(precision: str, device: torch.device, flag: str = "--precision") -> torch.dtype | None:
    """The autocast dtype of `precision` on `device` (None: fp32, autocast off)."""
    if precision not in PRECISIONS:
        raise SamoraError(f"{flag} {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise SamoraError(f"{flag} fp16: half precision runs on CUDA only, and the model runs on {device} here; "
                          "use bf16 or fp32 on the CPU, or --device cuda")
    return PRECISIONS[precision]


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """torch.autocast to `dtype` on the device's type; a no-op for None (fp32)."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch on `device`; to CUDA from pinned memory, so the copy does not block the host."""
    if device.type != "cuda":
        return batch.to(device)
    return (batch if batch.is_pinned() else batch.pin_memory()).to(device, non_blocking=True)
