"""Few-shot benchmark on real held-out subjects: SAMed vs SAMora, H-SAM vs H-SAMora, SAMed-2 vs
SAMora-2, each pair on the same self-pre-trained base encoder, labels, augmentation and evaluation;
the SAMora arms fine-tune for 10 % of their baseline's epochs (the recipes say so).

    python benchmarks/fewshot.py --ablations 3                    # k = 1, 3, 5 x 5 draws, all six arms
    python benchmarks/fewshot.py --arms samed samora              # one pair only
    python benchmarks/fewshot.py --dataset acdc --arms samed samora --docs-block fewshot-acdc   # the secondary
    python benchmarks/fewshot.py --ks 1 --draws 1 --test-count 4 --epochs-scale 0.05   # a smoke run

Every run is `samora-kit run` of recipes/fewshot/* with overrides, in runs/fewshot/<arm>-k<k>-d<draw>;
finished runs are reused. The base encoders (recipes/base_pretrain*.toml) and the stage-1 experts are
trained once, first, in full whatever --epochs-scale says, and timed apart from the arms. The table
(mean ± std over draws of the per-subject means) is printed and written between the fewshot markers
of docs/benchmarks.md, with the command line that produced it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from samora_kit.plugins import default_registry  # noqa: E402
from samora_kit.recipe import load_recipe  # noqa: E402
from samora_kit.runner import run, run_dir_of  # noqa: E402

ARM_NAMES = ("samed", "samora", "h_sam", "h_samora", "samed2", "samora2")
DATASETS = ("hippocampus", "acdc")  # recipes/fewshot/<dataset>_<arm>.toml; ACDC has the samed/samora pair
BASES = {"sam": "recipes/base_pretrain.toml", "sam2": "recipes/base_pretrain_sam2.toml"}  # backbone -> its base
TIMING = "fewshot-seconds.txt"
ABLATIONS = {  # label -> (arm, overrides): Table 4 and 5 at one k, then the schedule diagnostics
    "samora fuser sum": ("samora", ['fuser={ name = "sum" }']),
    "samora fuser lac": ("samora", ['fuser={ name = "lac" }']),
    "samora fuser mole": ("samora", ['fuser={ name = "mole" }']),
    "samora fuser lorahub": ("samora", ['fuser={ name = "lorahub" }']),
    "samora order 1-2-1": ("samora", ['fuser.order=["pixel", "image", "patch"]']),
    "samora order 1-1-2": ("samora", ['fuser.order=["patch", "image", "pixel"]']),
    "samora image expert only": ("samora", ['backbone.experts.names=["image"]', 'fuser={ name = "sum" }']),
    "samora patch expert only": ("samora", ['backbone.experts.names=["patch"]', 'fuser={ name = "sum" }']),
    "samora pixel expert only": ("samora", ['backbone.experts.names=["pixel"]', 'fuser={ name = "sum" }']),
    # is it the experts or the schedule? each arm on the other's epochs, and SAMora without warm-up
    "samora at samed's epochs": ("samora", ["train.epochs=100"]),
    "samora no warm-up": ("samora", ["train.warmup_iters=0"]),
    "samed at samora's epochs": ("samed", ["train.epochs=10"]),
    # what the frozen self-pre-trained base gives on its own: no LoRA, no experts, only the decoder trains
    "decoder only, encoder frozen": ("samed", ["backbone.lora.blocks=[]"]),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default="hippocampus")
    p.add_argument("--arms", nargs="+", choices=ARM_NAMES, default=list(ARM_NAMES))
    p.add_argument("--ks", type=int, nargs="+", default=[1, 3, 5])
    p.add_argument("--draws", type=int, default=5)
    p.add_argument("--test-count", type=int, help="score only this many test subjects (smoke runs)")
    p.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every run's epochs")
    p.add_argument("--ablations", type=int, metavar="K", help="also run the Table 4/5 ablations at this k")
    p.add_argument("--ablation-draws", type=int, help="draws per ablation (default: --draws)")
    p.add_argument("--runs", type=Path, help="default: runs/fewshot (hippocampus), runs/fewshot-<dataset>")
    p.add_argument("--no-docs", action="store_true", help="print only; leave docs/benchmarks.md alone")
    p.add_argument("--docs-block", default="fewshot", help="write between <!-- NAME:start/end --> (default fewshot)")
    args = p.parse_args()
    command = shlex.join(["python", "benchmarks/fewshot.py", *sys.argv[1:]])
    suffix = "" if args.dataset == "hippocampus" else f"-{args.dataset}"
    args.runs = args.runs or REPO / "runs" / f"fewshot{suffix}"
    arms = {arm: f"recipes/fewshot/{args.dataset}_{arm}.toml" for arm in args.arms}
    missing = [path for path in arms.values() if not (REPO / path).is_file()]
    if missing:
        sys.exit(f"no recipe {', '.join(missing)}: --arms for {args.dataset} are "
                 f"{[a for a in ARM_NAMES if (REPO / f'recipes/fewshot/{args.dataset}_{a}.toml').is_file()]}")

    one_off = _one_off_stages(list(arms.values()))
    results: dict[tuple[str, int], list[dict]] = {}
    for k in args.ks:
        for draw in range(args.draws):
            for arm in args.arms:
                results.setdefault((arm, k), []).append(_run_arm(arms[arm], arm, k, draw, [], args))
    if args.ablations:
        for label, (arm, extra) in ABLATIONS.items():
            folder = label.replace(" ", "_").replace("'", "").replace(",", "")
            for draw in range(args.ablation_draws or args.draws):
                results.setdefault((label, args.ablations), []).append(
                    _run_arm(f"recipes/fewshot/{args.dataset}_{arm}.toml", folder, args.ablations, draw, extra, args))
    table = _markdown(results, command, args) + "\n" + _one_off_table(one_off)
    print(table)
    if not args.no_docs:
        _write_docs(table, args.docs_block)


def _one_off_stages(arm_recipes: list[str]) -> dict[str, str]:
    """Train (or reuse) the base encoders and stage-1 experts the arms build on, each timed on its own.
    Returns stage recipe -> its wall seconds as text ("reused" when it was finished before timing)."""
    registry = default_registry()
    stages: list[str] = []
    for path in arm_recipes:
        recipe = load_recipe(REPO / path, registry)
        stages.append(BASES[recipe.backbone.name])
        if recipe.pretrain is not None:
            stages.append(str(recipe.pretrain.recipe))
    seconds = {}
    for stage in dict.fromkeys(stages):
        recipe = load_recipe(REPO / stage, registry)
        folder = run_dir_of(recipe)
        if not _finished(recipe, folder):
            (folder / TIMING).parent.mkdir(parents=True, exist_ok=True)
            elapsed = _timed(REPO / stage, [])
            (folder / TIMING).write_text(f"{elapsed:.1f}\n")
        seconds[stage] = (folder / TIMING).read_text().strip() if (folder / TIMING).exists() else "reused"
    return seconds


def _finished(recipe, folder: Path) -> bool:
    if recipe.base_pretraining is not None:
        return (folder / "base.safetensors").exists()
    return all((folder / "experts" / f"{e.name}.safetensors").exists() for e in recipe.experts)


def _run_arm(recipe: str, arm: str, k: int, draw: int, extra: list[str], args) -> dict:
    out = args.runs / f"{arm}-k{k}-d{draw}"
    overrides = [f"data.train.key=support_sets.k{k}.{draw}", f"run.output_dir={out}", *extra,
                 *_scaled(recipe, extra, args.epochs_scale)]
    if args.test_count:
        overrides.append(f"data.test.count={args.test_count}")
    timing = out / TIMING
    if not (out / "eval" / "summary.json").exists():
        if out.exists():  # an interrupted run: start it again, so its wall time is whole
            shutil.rmtree(out)
        seconds = _timed(REPO / recipe, overrides)
        timing.write_text(f"{seconds:.1f}\n")
    summary = json.loads((out / "eval" / "summary.json").read_text())
    return {"summary": summary, "seconds": float(timing.read_text()) if timing.exists() else float("nan")}


def _scaled(recipe: str, extra: list[str], scale: float) -> list[str]:
    if scale == 1.0:
        return []
    epochs = load_recipe(REPO / recipe, default_registry(), extra).train.epochs
    return [f"train.epochs={max(1, round(epochs * scale))}"]


def _timed(recipe: Path, overrides: list[str]) -> float:
    start = time.perf_counter()
    run(recipe, overrides, False, ["benchmarks/fewshot.py", str(recipe), *overrides])
    return time.perf_counter() - start


def _markdown(results: dict, command: str, args) -> str:
    first = next(iter(results.values()))[0]["summary"]
    classes = list(first["transunet"]["classes"])
    runs = args.runs.resolve().relative_to(REPO) if args.runs.resolve().is_relative_to(REPO) else args.runs
    lines = [f"Command: `{command}` (from the repository root; `{runs}/` holds every run).", ""]
    for policy, unit in (("transunet", "vox"), ("strict", "mm")):
        lines += [f"**{policy} policy** — Dice % and HD95 {unit}, mean ± std over draws "
                  f"(each draw: the mean over its test subjects)", ""]
        header = ["model", "k", "draws"] + [f"{c} Dice" for c in classes] + ["mean Dice", "mean HD95",
                                                                               "wall s/run"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for (arm, k), runs in results.items():
            cells = [arm, str(k), str(len(runs))]
            for c in classes:
                cells.append(_pm([r["summary"][policy]["classes"][c]["dice_mean"] for r in runs], 100))
            cells.append(_pm([r["summary"][policy]["mean"]["dice"] for r in runs], 100))
            cells.append(_pm([r["summary"][policy]["mean"]["hd95"] for r in runs], 1))
            cells.append(f"{statistics.fmean(r['seconds'] for r in runs):.0f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _one_off_table(seconds: dict[str, str]) -> str:
    lines = ["One-off stages the arms build on (trained once, not in the arms' wall time):", "",
             "| stage | recipe | wall s |", "|---|---|---|"]
    for stage, value in seconds.items():
        kind = "base encoder" if "base_pretrain" in stage else "stage-1 experts"
        lines.append(f"| {kind} | `{stage}` | {value} |")
    return "\n".join(lines) + "\n"


def _pm(values: list, scale: float) -> str:
    values = [v * scale for v in values if v is not None]
    if not values:
        return "n/a"
    spread = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {spread:.2f}"


def _write_docs(table: str, block: str) -> None:
    path = REPO / "docs" / "benchmarks.md"
    text = path.read_text()
    start, end = f"<!-- {block}:start -->", f"<!-- {block}:end -->"
    text = text[:text.index(start)] + f"{start}\n{table}\n{end}" + text[text.index(end) + len(end):] \
        if start in text else text.rstrip() + f"\n\n{start}\n{table}\n{end}\n"
    path.write_text(text)


if __name__ == "__main__":
    main()
