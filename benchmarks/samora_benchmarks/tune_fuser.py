"""Choose HL-Attn's defaults (the fuser's learning rate, the gate's initial value) on validation
subjects: the SAMora arm of the few-shot benchmark (k = 3, the paper's 10 % of the epochs) is
fine-tuned on a support draw and scored on the *other* subjects of the support pool, never on
the test subjects. Each setting runs on the same draws with the same seed (same decoder and
fuser initialisation); "decoder only" (no experts, no LoRA, same epochs) is the control.

    python -m samora_benchmarks.tune_fuser                       # the grid below, 2 draws, writes docs/decisions.md
    python -m samora_benchmarks.tune_fuser --draws 5 --fuser-lrs 0.005 0.0015 0.0005 --docs-block tune-fuser-5
    python -m samora_benchmarks.tune_fuser --draws 1 --no-docs   # quicker look

Runs go to runs/tune-fuser/<setting>-d<draw>; finished runs are reused.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

from samora_benchmarks.common import REPO, paired_difference, shown_difference, write_doc_block

from samora_kit.api import read_diagnostics, run

SPLIT = REPO.parent / "shared" / "data" / "msd_hippocampus" / "split.json"
SAMORA = "recipes/fewshot/hippocampus_samora.toml"
SAMED = "recipes/fewshot/hippocampus_samed.toml"
DECODER_LR = 0.005  # the arms' train.lr
FUSER_LRS = (0.005, 0.0015, 0.0005, 0.00015, 0.00005)
GATE_INITS = (0.0, 0.1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--draws", type=int, default=2)
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "tune-fuser")
    p.add_argument("--fuser-lrs", type=float, nargs="+", default=list(FUSER_LRS))
    p.add_argument("--gate-inits", type=float, nargs="+", default=list(GATE_INITS))
    p.add_argument("--no-docs", action="store_true")
    p.add_argument("--docs-block", default="tune-fuser", help="write between <!-- NAME:start/end --> of docs/decisions.md")
    args = p.parse_args()
    command = shlex.join(["python", "-m", "samora_benchmarks.tune_fuser", *sys.argv[1:]])
    split = json.loads(SPLIT.read_text())
    settings = {"decoder only": (SAMED, ["backbone.lora.blocks=[]", "train.epochs=10"])}
    for gate in args.gate_inits:
        for lr in args.fuser_lrs:
            settings[f"fuser_lr {lr:g}, gate_init {gate:g}"] = (SAMORA, [f"train.fuser_lr={lr}", f"fuser.gate_init={gate}"])
    rows = {}
    for label, (recipe, extra) in settings.items():
        rows[label] = [_run(recipe, extra, label, draw, split, args) for draw in range(args.draws)]
    table = _markdown(rows, command, args)
    print(table)
    if not args.no_docs:
        write_doc_block(REPO / "docs" / "decisions.md", args.docs_block, table)


def _run(recipe: str, extra: list[str], label: str, draw: int, split: dict, args) -> dict:
    support = split["support_sets"][f"k{args.k}"][draw]
    validation = [case for case in split["support_pool"] if case not in support]
    folder = args.runs / (label.replace(" ", "").replace(",", "_") + f"-d{draw}")
    overrides = [f"data.train.key=support_sets.k{args.k}.{draw}", f"data.test={{ cases = {json.dumps(validation)} }}",
                 f"run.output_dir={folder}", f"run.seed={1234 + draw}", 'eval.policies=["transunet"]',
                 "eval.overlays=0", "train.log_every=5", *extra]
    if not (folder / "eval" / "summary.json").exists():
        run(REPO / recipe, overrides, False, ["python -m samora_benchmarks.tune_fuser", recipe, *overrides])
    summary = json.loads((folder / "eval" / "summary.json").read_text())["transunet"]
    blocks = read_diagnostics(folder / "metrics.jsonl").get("fused_ratio", {}).values()  # per block: [(step, ratio)]
    return {"dice": summary["mean"]["dice"], "hd95": summary["mean"]["hd95"],
            "max_ratio": max((r for points in blocks for _, r in points), default=None),
            "last_ratio": max((points[-1][1] for points in blocks), default=None)}


def _markdown(rows: dict, command: str, args) -> str:
    lines = [f"Command: `{command}` (runs in `runs/tune-fuser/`). k = {args.k} support subjects, "
             f"{args.draws} draws; scored on the support pool's other {20 - args.k} subjects (transunet policy); "
             f"decoder lr {DECODER_LR}, 10 epochs. Fused/frozen: the largest block's ||fused|| / ||frozen "
             "attention output||, at its peak over the run and at the end.", "",
             "| setting | val Dice % | val HD95 vox | paired Δ Dice vs decoder only [95 % CI] | fused/frozen peak | at end |",
             "|---|---|---|---|---|---|"]
    control = [r["dice"] for r in rows["decoder only"]]
    for label, results in rows.items():
        dice = [r["dice"] for r in results]
        difference = shown_difference(*paired_difference([100 * d for d in dice], [100 * d for d in control]))
        peak = [r["max_ratio"] for r in results if r["max_ratio"] is not None]
        end = [r["last_ratio"] for r in results if r["last_ratio"] is not None]
        lines.append(f"| {label} | {100 * statistics.fmean(dice):.2f} | {statistics.fmean(r['hd95'] for r in results):.2f} "
                     f"| {'—' if label == 'decoder only' else difference} "
                     f"| {f'{max(peak):.3f}' if peak else '—'} | {f'{statistics.fmean(end):.3f}' if end else '—'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
