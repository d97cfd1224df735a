"""A real training run's time per step (the run's DataLoader feeding `samora_kit.train.loop.train`, logging
and all) against the step alone on a batch already on the device: how much the input pipeline and the
loop cost. Synapse-layout slices at 512 px, augmented, resized to the recipe's input size; random weights.

    python -m samora_benchmarks.epoch recipes/samed.toml --device cpu --batch 4 --steps 6 --workers 0 1
    python -m samora_benchmarks.epoch recipes/samed.toml --device cuda --batch 32 --steps 30 --workers 8   # GPU

Target: a run's step within 1.1x of the pure step wherever the loader (benchmarks/samora_benchmarks/loader.py) is faster
than the step."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from samora_benchmarks.common import benchmark_parser, model_from_recipe, report, synapse_slices, synchronize, write_synapse_like

from samora_kit.api import autocast_dtype, train
from samora_kit.api import DiceCELoss, DistContext, SegmentationObjective, build_optimizer


def pure_step_seconds(objective, dataset, train_cfg, device: torch.device, steps: int, warmup: int) -> float:
    """Seconds per step of forward, loss, backward and optimizer on one batch kept on the device."""
    items = [dataset[i] for i in range(train_cfg.batch_size)]
    batch = [torch.stack([item[k] for item in items]).to(device) for k in range(2)]
    optimizer = build_optimizer(objective, train_cfg)
    precision = autocast_dtype(train_cfg.amp, device)
    for i in range(warmup + steps):
        if i == warmup:
            synchronize(device)
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=precision or torch.bfloat16, enabled=precision is not None):
            loss = objective(*batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def run_step_seconds(objective, dataset, train_cfg, device: torch.device, steps: int, warmup: int,
                     run_dir: Path) -> float:
    """Seconds per step of steps warmup+1 .. warmup+steps of a real run (not its last, which saves)."""
    marks: dict[int, float] = {}

    def mark(step: int) -> None:
        if step in (warmup, warmup + steps):
            synchronize(device)
            marks[step] = time.perf_counter()

    train(objective, dataset, train_cfg, 1234, run_dir, DistContext(device=device), show_progress=False,
               step_callbacks=[mark])
    return (marks[warmup + steps] - marks[warmup]) / steps


def main() -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    p.add_argument("--slices", type=int, default=48, help="distinct 512-px slices on disk")
    args = p.parse_args()
    device = torch.device(args.device)
    recipe, model = model_from_recipe(args.recipes[0], args.overrides, args.num_classes, device,
                                      args.full_rank_logits)
    objective = SegmentationObjective(model, DiceCELoss(args.num_classes))
    with tempfile.TemporaryDirectory() as folder:
        dataset = synapse_slices(write_synapse_like(Path(folder) / "synapse", args.slices), model.image_size)
        base = recipe.train.model_copy(update={"batch_size": args.batch, "warmup": 0, "epochs": 10_000,
                                               "max_steps": args.warmup + args.steps + 1, "log_every": 10,
                                               "checkpoint_every": 10_000})
        step = pure_step_seconds(objective, dataset, base, device, args.steps, args.warmup)
        print(f"{args.recipes[0]} on {device}, batch {args.batch}: pure step {step * 1000:.0f} ms "
              f"({args.batch / step:.1f} images/s)")
        result = {"pure_step_ms": step * 1000}
        for workers in args.workers:
            train_cfg = base.model_copy(update={"num_workers": workers})
            seconds = run_step_seconds(objective, dataset, train_cfg, device, args.steps, args.warmup,
                                       Path(folder) / f"run-{workers}")
            print(f"workers {workers}: run step {seconds * 1000:.0f} ms, {seconds / step:.2f}x the pure step")
            result[f"run_step_ms_workers{workers}"] = seconds * 1000
        report(result)


if __name__ == "__main__":
    main()
