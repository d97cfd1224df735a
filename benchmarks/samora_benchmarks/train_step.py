"""Images/s and peak memory of one training step (forward, loss, backward, AdamW) of a recipe's
model with random weights.

    python -m samora_benchmarks.train_step recipes/samed.toml --device cpu --batch 4 --steps 5
    python -m samora_benchmarks.train_step recipes/samed.toml recipes/samora.toml --device cpu --batch 2   # + ratio
    python -m samora_benchmarks.train_step recipes/samed.toml --device cuda --batch 32 --compile          # run.compile
    python -m samora_benchmarks.train_step recipes/samed.toml recipes/samora.toml --device cpu --batch 2 --profile 2
        # + where the time goes: the ops' own time per step, and each op's excess over the first recipe
"""

from __future__ import annotations

import torch

from samora_benchmarks.common import (benchmark_parser, flops_of, measure_each, model_from_recipe, op_milliseconds, peak_memory_mib, report,
                    seconds_per_call)

from samora_kit.api import DiceCELoss, build_optimizer


def main() -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--batch", type=int, default=None, help="default: the recipe's train.batch_size")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="after timing, profile STEPS more steps and report each op's own CPU time per step "
                        "(on a GPU that is launch time, not kernel time)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model, as run.compile = true does "
                   "(the warm-up steps include the compilation)")
    args = p.parse_args()
    if len(args.recipes) > 1:
        return measure_each(__file__, args.recipes)
    args.recipe = args.recipes[0]

    device = torch.device(args.device)
    recipe, model = model_from_recipe(args.recipe, args.overrides, args.num_classes, device,
                                      args.full_rank_logits)
    batch = args.batch or recipe.train.batch_size
    size = model.image_size
    images = torch.rand(batch, 3, size, size, device=device)
    labels = torch.randint(0, args.num_classes + 1, (batch, size // 4, size // 4), device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(model, recipe.train)  # the optimizer a run of the recipe trains with
    loss_fn = DiceCELoss(args.num_classes)
    bf16 = args.amp == "bf16" or (args.amp == "auto" and device.type == "cuda")

    forward = model

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = forward(images)
        low = torch.nn.functional.interpolate(labels[:, None].float(), size=logits.shape[-2:], mode="nearest")
        loss = loss_fn(logits.float(), low[:, 0].long())["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step_flops = flops_of(step)
    if args.compile:
        forward = torch.compile(model)
    seconds = seconds_per_call(step, args.steps, args.warmup, device)
    memory_name, memory = peak_memory_mib(device)
    total = sum(p.numel() for p in model.parameters())
    print(f"recipe {args.recipe} ({recipe.backbone.name} {getattr(recipe.backbone, 'variant', '')} "
          f"{size}px + {recipe.decoder.name}), {total / 1e6:.1f} M parameters, {len(params)} trainable tensors")
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"batch {batch}, {'bf16 autocast' if bf16 else 'fp32'}, {'compiled' if args.compile else 'eager'}, "
          f"{args.steps} timed steps")
    print(f"step {seconds * 1000:.1f} ms  |  {batch / seconds:.2f} images/s  |  "
          f"{memory_name} {memory:.0f} MiB  |  {step_flops / seconds / 1e12:.2f} TFLOP/s achieved (whole step)")
    result = {"step_ms": seconds * 1000, "memory_mib": memory, "step_gflop": step_flops / 1e9,
              "tflops": step_flops / seconds / 1e12}
    if args.profile:
        result["op_ms"] = op_milliseconds(step, args.profile)
    report(result)


if __name__ == "__main__":
    main()
