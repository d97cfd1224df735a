"""Parameter counts of recipes' models (random weights, no files read), next to the paper's
Table 3 where it has the model; with --infer-volume also seconds per test volume (Table 6).

    python -m samora_benchmarks.params recipes/samed.toml recipes/samora.toml recipes/h_sam.toml recipes/h_samora.toml
    python -m samora_benchmarks.params recipes/*.toml --infer-volume 32,512,512
    python -m samora_benchmarks.params recipes/h_sam.toml --parts        # the decoder part by part
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from samora_benchmarks.common import model_from_recipe

from samora_kit.api import predict_volume

# SAMora paper, Table 3: total parameters (M) as the authors report them
PAPER_TABLE_3 = {"samed": 108.8, "samora": 118.5, "samed2": 99.1, "samora2": 109.7, "h_sam": 112.3, "h_samora": 122.0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipes", type=Path, nargs="+")
    p.add_argument("--num-classes", type=int, default=8)
    p.add_argument("--infer-volume", help="Z,H,W of a random volume to time inference on (CPU unless --device)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--parts", action="store_true", help="also the decoder's parameters part by part (two levels)")
    args = p.parse_args()
    device = torch.device(args.device)
    print(f"{'recipe':28s} {'total M':>9s} {'trainable M':>12s} {'encoder M':>10s} {'fusers M':>9s} "
          f"{'decoder M':>10s} {'paper total M':>14s}" + (f" {'s/volume':>9s}" if args.infer_volume else ""))
    for path in args.recipes:
        recipe, model = model_from_recipe(path, [], args.num_classes, device)
        seconds = _seconds_per_volume(model, args.infer_volume, recipe.eval.batch_size, device) \
            if args.infer_volume else None
        paper = PAPER_TABLE_3.get(path.stem)
        fusers = sum(p.numel() for n, p in model.backbone.named_parameters() if ".fuser." in n) / 1e6
        encoder = _count(model.backbone) - fusers
        print(f"{str(path):28s} {_count(model):9.2f} {_count(model, trainable=True):12.2f} {encoder:10.2f} "
              f"{fusers:9.2f} {_count(model.decoder):10.2f} {paper if paper is not None else '-':>14}"
              + (f" {seconds:9.2f}" if seconds is not None else ""))
        if args.parts:
            _print_parts(model.decoder, "decoder")


def _seconds_per_volume(model, shape: str, batch: int, device: torch.device) -> float:
    volume = np.random.default_rng(0).random(tuple(int(n) for n in shape.split(",")), dtype=np.float32)
    predict_volume(model, volume[:batch], batch, device)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    predict_volume(model, volume, batch, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _print_parts(module: torch.nn.Module, name: str, depth: int = 2) -> None:
    for child_name, child in module.named_children():
        if depth and _count(child) >= 0.01:
            print(f"    {name + '.' + child_name:52s} {_count(child):9.2f} M")
            _print_parts(child, f"{name}.{child_name}", depth - 1)


def _count(module: torch.nn.Module, trainable: bool = False) -> float:
    """Millions of parameters; frozen expert LoRAs (kept as buffers) count as parameters too."""
    params = sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)
    experts = 0 if trainable else sum(b.numel() for n, b in module.named_buffers() if ".expert_" in n)
    return (params + experts) / 1e6


if __name__ == "__main__":
    main()
