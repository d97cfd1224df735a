"""One optimizer step over a recipe's trainable parameters (random gradients): torch's per-tensor AdamW
loop (its default on the CPU), the foreach form, and the fused kernel `build_optimizer` picks.

    python -m samora_benchmarks.optimizer recipes/samed.toml recipes/samora.toml --device cpu
"""

from __future__ import annotations

import torch
from samora_benchmarks.common import benchmark_parser, measure_each, model_from_recipe, report, seconds_per_call

FORMS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def main() -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    if len(args.recipes) > 1:
        return measure_each(__file__, args.recipes)
    device = torch.device(args.device)
    _, model = model_from_recipe(args.recipes[0], args.overrides, args.num_classes, device, args.full_rank_logits)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    figures = {}
    for form, options in FORMS.items():
        optimizer = torch.optim.AdamW(params, lr=1e-4, **options)
        figures[f"{form}_ms"] = seconds_per_call(optimizer.step, args.steps, 2, device) * 1000
    print(f"recipe {args.recipes[0]}: {len(params)} trainable tensors, "
          f"{sum(p.numel() for p in params) / 1e6:.1f} M values on {device}")
    print("  ".join(f"{form} {figures[f'{form}_ms']:.1f} ms" for form in FORMS))
    report(figures)


if __name__ == "__main__":
    main()
