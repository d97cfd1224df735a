"""Choose a foundation's full budget (SAMed's epochs) and input size on validation subjects, never test ones.

SAMed runs once per input size for --epochs on one support draw, scoring the support pool's own validation
subjects (the first few outside the draw's support set, as benchmarks/samora_benchmarks/fewshot.py does for its curves) every
--every epochs. The budget is the first validated epoch after which the best validation Dice gains less than
--tolerance Dice points more (rounded up to a multiple of --every). Beside it, as a check that one lucky
scoring did not set the budget, the table shows where the same rule lands on the curve smoothed by a
3-point moving average; it is reported, not used. The size is the one with the best
validation Dice at that budget, unless a smaller size is within --tolerance of it (it is cheaper). Nothing
here reads a test subject's label: the test set is scored only by the run's own evaluation, which this script
does not read.

    python -m samora_benchmarks.choose_budget --foundation litemedsam --dataset hippocampus --k 3 --sizes 64 128 \
        --epochs 200 --every 10 --docs-block litemedsam-budget-hippocampus
"""

from __future__ import annotations

import argparse
import shlex
import sys

from samora_benchmarks.common import RECIPES, REPO, shown, write_doc_block
from samora_benchmarks.fewshot import FOUNDATIONS, _timed, arm_overrides, foundation_prerequisites, validation_overrides

from samora_kit.api import default_registry, load_recipe, validation_records


def plateau(epochs: list[float], dice: list[float], tolerance: float) -> float:
    """The first epoch after which the best Dice so far never rises by `tolerance` or more."""
    best_after = max(dice)
    for epoch, _ in zip(epochs, dice):
        reached = max(d for e, d in zip(epochs, dice) if e <= epoch)
        if best_after - reached < tolerance:
            return epoch
    return epochs[-1]


def moving_average(values: list[float], window: int) -> list[float]:
    """Each value averaged with its neighbours, `window` wide and centred (shorter at the ends)."""
    half = window // 2
    windows = [values[max(0, i - half):i + half + 1] for i in range(len(values))]
    return [sum(w) / len(w) for w in windows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--foundation", choices=FOUNDATIONS, default="litemedsam")
    p.add_argument("--dataset", default="hippocampus", choices=["hippocampus", "acdc"])
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--draw", type=int, default=0)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--tolerance", type=float, default=0.5, help="Dice points (0-100)")
    p.add_argument("--docs-block", help="write the table between these markers of docs/benchmarks.md")
    args = p.parse_args()
    foundation_prerequisites(args.foundation, teachers_too=False)
    recipe = RECIPES / args.foundation / f"{args.dataset}_samed.toml"
    runs = REPO / "runs" / args.foundation / f"budget-{args.dataset}"
    curves: dict[int, tuple[list[float], list[float], float]] = {}  # size -> epochs, Dice, training seconds
    for size in args.sizes:
        out = runs / f"samed-s{size}-e{args.epochs}-k{args.k}-d{args.draw}"
        overrides = [*arm_overrides([f"backbone.image_size={size}", f"train.epochs={args.epochs}"], args.k,
                                    args.draw, out), "eval.overlays=0"]
        resolved = load_recipe(recipe, default_registry(), overrides)
        overrides += [*validation_overrides(resolved, args.k, args.draw, args.epochs), f"validation.every={args.every}"]
        # an interrupted run resumes from its last state (no wall time is shown, so nothing is lost)
        resume = (out / "checkpoints").is_dir()
        seconds = float("nan") if (out / "eval" / "summary.json").exists() else _timed(recipe, overrides, resume)
        records = validation_records(out)
        curves[size] = ([r["epoch"] for r in records], [100 * r["val_dice"] for r in records],
                        records[-1]["elapsed_s"] if records else seconds)
    budgets = {size: plateau(e, d, args.tolerance) for size, (e, d, _) in curves.items()}
    budget = max(budgets.values())
    budget = int(-(-budget // args.every) * args.every)

    def at(size: int, epoch: float) -> float:
        epochs, dice, _ = curves[size]
        return max(d for e, d in zip(epochs, dice) if e <= epoch)

    best = max(at(size, budget) for size in args.sizes)
    size = min(s for s in args.sizes if best - at(s, budget) < args.tolerance)
    command = shlex.join(["python", "-m", "samora_benchmarks.choose_budget", *sys.argv[1:]])
    lines = [f"Command: `{command}` (runs in `{shown(runs)}/`; validation subjects only).", "",
             "| input size | validation Dice % at each validated epoch | best (epoch) | plateau epoch "
             "| plateau epoch, 3-point moving average (check) |",
             "|---|---|---|---|---|"]
    for s, (epochs, dice, _) in curves.items():
        peak = max(range(len(dice)), key=dice.__getitem__)
        points = ", ".join(f"{d:.1f}" for d in dice)
        smoothed = plateau(epochs, moving_average(dice, 3), args.tolerance)
        lines.append(f"| {s} | {points} | {dice[peak]:.1f} ({epochs[peak]:g}) | {budgets[s]:g} | {smoothed:g} |")
    lines += ["", f"**Full budget: {budget} epochs; input size: {size} px** (best validation Dice by then "
                  f"{at(size, budget):.1f}; tolerance {args.tolerance} Dice points)."]
    table = "\n".join(lines)
    print(table)
    if args.docs_block:
        write_doc_block(REPO / "docs" / "benchmarks.md", args.docs_block, table)


if __name__ == "__main__":
    main()
