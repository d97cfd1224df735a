"""Seconds per test volume of a recipe's model (random weights): slice-wise prediction of whole
volumes, stacked back, as `samora-kit evaluate` does it.

    python -m samora_benchmarks.infer recipes/samed.toml --device cpu --volume 32,224,224 --volumes 2
    python -m samora_benchmarks.infer recipes/samed.toml recipes/samora.toml --device cpu --volume 16,224,224   # + ratio
    python -m samora_benchmarks.infer recipes/samed.toml recipes/samora.toml --device cpu --volume 8,224,224 --batch 8 --profile 2
"""

from __future__ import annotations

import time

import numpy as np
import torch

from samora_benchmarks.common import (benchmark_parser, flop_counter, measure_each, model_from_recipe, op_milliseconds, peak_memory_mib,
                    report, synchronize)

from samora_kit.api import inference_dtype, predict_volume


def main() -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--volume", default="64,512,512", help="Z,H,W of the random test volume "
                   "(default: a Synapse-sized CT volume cut to 64 slices)")
    p.add_argument("--volumes", type=int, default=3, help="timed volumes")
    p.add_argument("--batch", type=int, default=None, help="slices per forward (default: eval.batch_size)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="as samora-kit evaluate --precision")
    p.add_argument("--profile", type=int, default=0, metavar="VOLUMES",
                   help="after timing, profile VOLUMES more volumes and report each op's own CPU time per volume "
                        "(with several recipes: which ops grow from the first recipe to the others)")
    args = p.parse_args()
    if len(args.recipes) > 1:
        return measure_each(__file__, args.recipes)
    args.recipe = args.recipes[0]

    device = torch.device(args.device)
    recipe, model = model_from_recipe(args.recipe, args.overrides, args.num_classes, device,
                                      args.full_rank_logits)
    shape = tuple(int(n) for n in args.volume.split(","))
    volume = np.random.default_rng(0).random(shape, dtype=np.float32)
    batch = args.batch or recipe.eval.batch_size
    precision = inference_dtype(args.precision, device)
    with flop_counter() as counter:  # one forward of `batch` slices, also the warm-up
        predict_volume(model, volume[:batch], batch, device, precision)
    slice_gflop = sum(counter.get_flop_counts().get("Global", {}).values()) / batch / 1e9
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.volumes):
        predict_volume(model, volume, batch, device, precision)
    synchronize(device)
    seconds = (time.perf_counter() - start) / args.volumes
    memory_name, memory = peak_memory_mib(device)
    print(f"recipe {args.recipe} ({recipe.backbone.name} {getattr(recipe.backbone, 'variant', '')} "
          f"{model.image_size}px + {recipe.decoder.name}) on {device}, {args.precision}, volume {shape}, "
          f"{batch} slices per forward")
    print(f"{seconds:.2f} s per volume  |  {shape[0] / seconds:.1f} slices/s  |  {memory_name} {memory:.0f} MiB  |  "
          f"{slice_gflop:.2f} GFLOP per slice")
    result = {"seconds_per_volume": seconds, "memory_mib": memory, "gflop_per_slice": slice_gflop}
    if args.profile:
        result["op_ms"] = op_milliseconds(lambda: predict_volume(model, volume, batch, device, precision),
                                          args.profile)
    report(result)


if __name__ == "__main__":
    main()
