"""Few-shot benchmark: SAMed against SAMora on real held-out subjects, same base encoder, labels,
augmentation and evaluation; SAMora fine-tunes for 10 % of SAMed's epochs (the recipes say so).

    python benchmarks/fewshot.py                                  # k = 1, 3, 5 x 5 draws, all test subjects
    python benchmarks/fewshot.py --ks 1 --draws 1 --test-count 4 --epochs-scale 0.05   # a smoke run

Every run is `samora-kit run` of recipes/fewshot/* with overrides, in runs/fewshot/<arm>-k<k>-d<draw>;
finished runs are reused. The base encoder (recipes/base_pretrain.toml) and SAMora's stage-1 experts
are trained once (in full, whatever --epochs-scale says). The table (mean ± std over draws of the per-subject means) is printed and written
between the fewshot markers of docs/benchmarks.md, with the command line that produced it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from samora_kit.plugins import default_registry  # noqa: E402
from samora_kit.recipe import load_recipe  # noqa: E402
from samora_kit.runner import run, run_dir_of  # noqa: E402

ARMS = {"samed": "recipes/fewshot/hippocampus_samed.toml", "samora": "recipes/fewshot/hippocampus_samora.toml"}
ABLATIONS = {  # name -> overrides of the SAMora arm (Table 4 and 5 at one k)
    "fuser sum": ['fuser={ name = "sum" }'],
    "fuser lac": ['fuser={ name = "lac" }'],
    "fuser mole": ['fuser={ name = "mole" }'],
    "fuser lorahub": ['fuser={ name = "lorahub" }'],
    "order 1-2-1": ['fuser.order=["pixel", "image", "patch"]'],
    "order 1-1-2": ['fuser.order=["patch", "image", "pixel"]'],
    "image expert only": ['backbone.experts.names=["image"]', 'fuser={ name = "sum" }'],
    "patch expert only": ['backbone.experts.names=["patch"]', 'fuser={ name = "sum" }'],
    "pixel expert only": ['backbone.experts.names=["pixel"]', 'fuser={ name = "sum" }'],
}
START, END = "<!-- fewshot:start -->", "<!-- fewshot:end -->"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ks", type=int, nargs="+", default=[1, 3, 5])
    p.add_argument("--draws", type=int, default=5)
    p.add_argument("--test-count", type=int, help="score only this many test subjects (smoke runs)")
    p.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every run's epochs")
    p.add_argument("--ablations", type=int, metavar="K", help="also run the Table 4/5 ablations at this k")
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "fewshot")
    p.add_argument("--no-docs", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args()
    command = shlex.join(["python", "benchmarks/fewshot.py", *sys.argv[1:]])

    base = REPO / "runs" / "base-hippocampus" / "base.safetensors"
    if not base.exists():
        _timed(REPO / "recipes" / "base_pretrain.toml", [])  # always in full: every later run builds on it
    results: dict[tuple[str, int], list[dict]] = {}
    for k in args.ks:
        for draw in range(args.draws):
            for arm, recipe in ARMS.items():
                results.setdefault((arm, k), []).append(_run_arm(recipe, arm, k, draw, [], args))
    if args.ablations:
        for name, extra in ABLATIONS.items():
            for draw in range(args.draws):
                label = "samora " + name
                results.setdefault((label, args.ablations), []).append(
                    _run_arm(ARMS["samora"], label.replace(" ", "_"), args.ablations, draw, extra, args))
    table = _markdown(results, command, args)
    print(table)
    if not args.no_docs:
        _write_docs(table)


def _run_arm(recipe: str, arm: str, k: int, draw: int, extra: list[str], args) -> dict:
    out = args.runs / f"{arm}-k{k}-d{draw}"
    overrides = [f"data.train.key=support_sets.k{k}.{draw}", f"run.output_dir={out}", *extra,
                 *_scaled(recipe, args.epochs_scale)]
    if args.test_count:
        overrides.append(f"data.test.count={args.test_count}")
    timing = out / "fewshot-seconds.txt"
    if not (out / "eval" / "summary.json").exists():
        seconds = _timed(REPO / recipe, overrides)
        timing.write_text(f"{seconds:.1f}\n")
    summary = json.loads((out / "eval" / "summary.json").read_text())
    return {"summary": summary, "seconds": float(timing.read_text()) if timing.exists() else float("nan")}


def _scaled(recipe: str, scale: float) -> list[str]:
    if scale == 1.0:
        return []
    epochs = load_recipe(REPO / recipe, default_registry()).train.epochs
    return [f"train.epochs={max(1, round(epochs * scale))}"]


def _timed(recipe: Path, overrides: list[str]) -> float:
    start = time.perf_counter()
    run(recipe, overrides, False, ["benchmarks/fewshot.py", str(recipe), *overrides])
    return time.perf_counter() - start


def _markdown(results: dict, command: str, args) -> str:
    first = next(iter(results.values()))[0]["summary"]
    classes = list(first["transunet"]["classes"])
    lines = [f"Command: `{command}` (from the repository root; `{args.runs}` holds every run).", ""]
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


def _pm(values: list, scale: float) -> str:
    values = [v * scale for v in values if v is not None]
    if not values:
        return "n/a"
    spread = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {spread:.2f}"


def _write_docs(table: str) -> None:
    path = REPO / "docs" / "benchmarks.md"
    text = path.read_text()
    block = f"{START}\n{table}\n{END}"
    text = text[:text.index(START)] + block + text[text.index(END) + len(END):] if START in text \
        else text.rstrip() + "\n\n## Few-shot results\n" + block + "\n"
    path.write_text(text)


if __name__ == "__main__":
    main()
