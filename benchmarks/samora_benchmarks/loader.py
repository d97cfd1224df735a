"""Images/s of the real training input pipeline per number of loader workers: Synapse-layout slices at
512 px, augmented (the recipes' defaults) and resized to 224, batched by the run's one DataLoader.

    python -m samora_benchmarks.loader --workers 0 1 2 --batch 12 --batches 30

Compare with the step's images/s (benchmarks/samora_benchmarks/train_step.py): where the loader is faster, an epoch can
run at the step's speed (benchmarks/samora_benchmarks/epoch.py measures whether it does)."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from samora_benchmarks.common import synapse_slices, write_synapse_like

from samora_kit.api import RunBatches, run_loader


def images_per_second(dataset, workers: int, batch: int, batches: int, device: torch.device) -> float:
    steps_per_epoch = len(dataset) // batch
    sampler = RunBatches(len(dataset), 1234, 0, batches + 2, steps_per_epoch, batch, batch, 0)
    loader = iter(run_loader(dataset, sampler, 1234, workers, device))
    for _ in range(2):  # workers start, first batches in flight
        next(loader)
    start = time.perf_counter()
    for _ in range(batches):
        images, labels = next(loader)
        images.to(device, non_blocking=True)
    return batches * batch / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--slices", type=int, default=64, help="distinct 512-px slices on disk")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        dataset = synapse_slices(write_synapse_like(Path(folder) / "synapse", args.slices), args.image_size)
        dataset_epochs = (args.batches + 2) * args.batch / len(dataset)
        print(f"{len(dataset)} slices 512 -> {args.image_size} px, augmented; batch {args.batch}, {args.batches} "
              f"timed batches ({dataset_epochs:.1f} passes over the slices); {torch.get_num_threads()} threads")
        for workers in args.workers:
            rate = images_per_second(dataset, workers, args.batch, args.batches, device)
            per_worker = f", {rate / workers:.1f} per worker" if workers else ""
            print(f"workers {workers}: {rate:.1f} images/s{per_worker}")


if __name__ == "__main__":
    main()
