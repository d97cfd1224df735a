"""Shared by the benchmark scripts: a model from a recipe with random weights."""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from scipy.stats import t as t_distribution

REPO = Path(__file__).resolve().parents[2]  # the checkout: benchmarks/samora_benchmarks/common.py
RECIPES = REPO / "benchmarks" / "recipes"  # this package's recipes: world/, litemedsam/

from samora_kit.api import atomic_write_text, build_model, default_registry, load_recipe


def shown(path: Path) -> str:
    """`path` as the docs give it: relative to the repository when inside it."""
    return str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)


def model_from_recipe(recipe_path: Path, overrides: list[str], num_classes: int, device: torch.device,
                      full_rank_logits: bool = False):
    """The recipe's model with random weights: checkpoints named in the recipe are not read."""
    if full_rank_logits:
        from samora_kit_plugins.sam import experts

        experts.LOW_RANK_LOGITS = False
    registry = default_registry()
    recipe = load_recipe(recipe_path, registry, overrides)
    recipe.backbone.checkpoint = None
    if hasattr(recipe.decoder, "checkpoint"):
        recipe.decoder.checkpoint = None
    torch.manual_seed(0)
    return recipe, build_model(recipe, registry, num_classes).to(device)


def peak_memory_mib(device: torch.device) -> tuple[str, float]:
    if device.type == "cuda":
        return "peak GPU memory", torch.cuda.max_memory_allocated(device) / 2**20
    return "peak RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flop_counter():
    """torch's FlopCounterMode, plus the CPU's fused attention kernel, which torch leaves uncounted (an
    attention that takes it would add 0 FLOPs). Its formulas are those torch registers for the CUDA kernels:
    the forward equals the explicit q.k, softmax, p.v; the backward counts the gradients of q, k and v and the
    recomputed logits, whichever of them autograd needs."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten

    def forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out, query, key, value)

    return fc.FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward})


def flops_of(fn) -> float:
    """FLOPs of one call of `fn` (`flop_counter`; the call also warms up)."""
    with flop_counter() as counter:
        fn()
    return float(sum(counter.get_flop_counts().get("Global", {}).values()))


def seconds_per_call(fn, calls: int, warmup: int, device: torch.device) -> float:
    """Mean wall seconds of `calls` calls of `fn` after `warmup` untimed ones (peak memory counted from there)."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / calls


def benchmark_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every per-recipe benchmark takes: recipes, overrides, device, class count."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipes", type=Path, nargs="+", help="one recipe, or several: each is measured in its own "
                   "process, then compared with the first as a ratio")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a recipe override (key.path=value, as for samora-kit run); repeatable")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--num-classes", type=int, default=8)
    p.add_argument("--full-rank-logits", action="store_true",
                   help="SAM expert variants: compute every variant's attention logits in full instead of as "
                        "rank-r corrections of the frozen logits (to measure what the corrections save)")
    return p


def report(result: dict[str, float]) -> None:
    """The last line of a measurement, read back by `measure_each`."""
    print("result " + json.dumps(result))


def measure_each(script: str, recipes: list[Path]) -> None:
    """Several recipes: each measured by `script` (a module of this package, by its file) in its own process
    (so peak memory is its own), one after the other, then every figure of each recipe as a ratio to the
    first recipe's."""
    argv = [a for a in sys.argv[1:] if a not in {str(r) for r in recipes}]
    module = f"{__package__}.{Path(script).stem}"
    rows = []
    for recipe in recipes:
        done = subprocess.run([sys.executable, "-m", module, str(recipe), *argv], capture_output=True, text=True)
        print(done.stdout, end="")
        if done.returncode != 0:
            sys.exit(f"{script} {recipe} failed:\n{done.stderr[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1].removeprefix("result ")))
    for recipe, row in zip(recipes[1:], rows[1:]):
        ratios = ", ".join(f"{row[k] / rows[0][k]:.2f}x {k}" for k in rows[0]
                           if isinstance(rows[0][k], float) and rows[0][k])
        print(f"{recipe} / {recipes[0]}: {ratios}")
        if "op_ms" in row and "op_ms" in rows[0]:
            print_op_excess(row["op_ms"], rows[0]["op_ms"], recipe.stem, recipes[0].stem)


def op_milliseconds(fn, calls: int) -> dict[str, float]:
    """Each op's own (self) CPU milliseconds per call of `fn`, over `calls` profiled calls."""
    from torch.profiler import profile

    with profile() as prof:
        for _ in range(calls):
            fn()
    return {e.key: e.self_cpu_time_total / 1e3 / calls for e in prof.key_averages() if e.self_cpu_time_total > 0}


def print_op_excess(ops: dict[str, float], base: dict[str, float], name: str, base_name: str, rows: int = 15) -> None:
    """The ops whose own time grew most from `base` to `ops`, in ms per call (a markdown table)."""
    excess = {op: ops.get(op, 0.0) - base.get(op, 0.0) for op in ops.keys() | base.keys()}
    print(f"\n| op | {base_name} ms | {name} ms | excess ms |\n|---|---|---|---|")
    for op in sorted(excess, key=excess.get, reverse=True)[:rows]:
        print(f"| {op} | {base.get(op, 0.0):.1f} | {ops.get(op, 0.0):.1f} | {excess[op]:+.1f} |")
    total, base_total = sum(ops.values()), sum(base.values())
    print(f"| all ops | {base_total:.1f} | {total:.1f} | {total - base_total:+.1f} |")


def write_doc_block(path: Path, block: str, text: str) -> None:
    """Put `text` between <!-- block:start --> and <!-- block:end --> in `path` (appended when absent)."""
    doc = path.read_text()
    start, end = f"<!-- {block}:start -->", f"<!-- {block}:end -->"
    doc = doc[:doc.index(start)] + f"{start}\n{text}\n{end}" + doc[doc.index(end) + len(end):] \
        if start in doc else doc.rstrip() + f"\n\n{start}\n{text}\n{end}\n"
    atomic_write_text(path, doc)


def paired_difference(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean of the per-draw differences a - b and its 95 % t-interval (nan bounds for one draw)."""
    diffs = [x - y for x, y in zip(a, b)]
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, math.nan, math.nan
    half = t_distribution.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def shown_difference(mean: float, low: float, high: float) -> str:
    """A paired difference as a table cell: "+1.23 [-0.40, +2.86]", or "+1.23 [one draw: no interval]"."""
    if math.isnan(low):
        return f"{mean:+.2f} [one draw: no interval]"
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"


def write_synapse_like(root: Path, slices: int, size: int = 512, seed: int = 0) -> Path:
    """A folder in TransUNet's Synapse layout with `slices` random `size`² training slices (smooth images,
    8 organ labels as blobs) and one small test volume: the real pipeline's input at the real size."""
    import numpy as np

    rng = np.random.default_rng(seed)
    (root / "train_npz").mkdir(parents=True, exist_ok=True)
    (root / "test_vol_h5").mkdir(exist_ok=True)
    (root / "lists").mkdir(exist_ok=True)
    yy, xx = np.mgrid[:size, :size] / size
    names = []
    for n in range(slices):
        image = (0.5 + 0.25 * np.sin(8 * xx + n) * np.cos(6 * yy) + 0.05 * rng.standard_normal((size, size)))
        label = np.zeros((size, size), np.float32)
        for organ in range(1, 9):
            cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.03, 0.1)
            label[(yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2] = organ
        names.append(f"case0005_slice{n:03d}")
        np.savez(root / "train_npz" / f"{names[-1]}.npz", image=image.clip(0, 1).astype(np.float32), label=label)
    import h5py

    with h5py.File(root / "test_vol_h5" / "case0001.npy.h5", "w") as h5:
        h5["image"], h5["label"] = rng.random((2, size, size), np.float32), np.zeros((2, size, size), np.int64)
    (root / "lists" / "train.txt").write_text("\n".join(names) + "\n")
    (root / "lists" / "test_vol.txt").write_text("case0001\n")
    return root


def synapse_slices(root: Path, image_size: int, seed: int = 0):
    """The training SliceDataset of a Synapse-layout folder with the recipes' default augmentation."""
    from samora_kit.api import AugmentConfig, SliceDataset
    from samora_kit_plugins.datasets.synapse import SynapseConfig, build_synapse

    adapter = build_synapse(SynapseConfig(root=root, list_dir="lists"))
    volumes = [adapter.load_case(case) for case in adapter.cases("train")]
    return SliceDataset(volumes, image_size, AugmentConfig(), seed)
