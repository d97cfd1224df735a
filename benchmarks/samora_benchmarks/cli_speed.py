"""Wall seconds of the quick commands, each in a fresh process as a user types it: `samora-kit --help`,
`samora-kit plugins` and `samora-kit validate` of small recipes (issue 23: at most 3 s each on an idle
machine). The median and the minimum of several runs, and the model libraries each command imported (read
from `python -X importtime`), which show what a slow one loads.

    python -m samora_benchmarks.cli_speed --repeats 7 --baseline 1aece29 --write-doc docs/benchmarks.md

Each run is `python -P -c "from samora_kit.cli import main; main()"` (what the `samora-kit` script runs) in
the repository. `--baseline COMMIT` also times that commit's samora_kit and plugins (a `git archive` copy
put first on PYTHONPATH; the installed entry points and the recipes stay this checkout's), alternating with
this checkout's run by run, so that both see the same load."""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# the quick start's SAMed on LiteMedSAM (needs `samora-kit weights import --format litemedsam
# runs/litemedsam/lite_medsam.safetensors` first), the same on the tiny SAM, the U-Net arm
SMALL_RECIPES = ("recipes/quickstart_samed.toml", "recipes/tiny/quickstart_samed.toml",
                 "recipes/fewshot/hippocampus_unet.toml")
TARGET_S = 3.0  # issue 23, on an idle machine
CLI = "import sys; from samora_kit.cli import main; sys.exit(main())"
# what building a component imports; tests/test_layout.py checks that loading the plugins imports none of them
HEAVY = ("monai", "segment_anything", "sam2", "timm", "torchvision", "nibabel", "scipy", "matplotlib", "tensorboard",
         "h5py", "omegaconf", "sklearn")


def commands(recipes: list[str]) -> list[list[str]]:
    return [["--help"], ["plugins"], *(["validate", recipe] for recipe in recipes)]


class CommandFailed(Exception):
    """`samora-kit ARGV` exited non-zero (its message is the exception's)."""


def seconds(argv: list[str], code: Path | None) -> float:
    """One run of `samora-kit ARGV` in a fresh interpreter, with `code`'s samora_kit (None: this checkout's)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-P", "-c", CLI, *argv], cwd=REPO, capture_output=True, text=True,
                          env=_env(code))
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise CommandFailed(f"samora-kit {' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return took


def heavy_imports(argv: list[str], code: Path | None) -> list[str]:
    """The HEAVY top-level packages `samora-kit ARGV` imported (read from -X importtime's report)."""
    done = subprocess.run([sys.executable, "-P", "-X", "importtime", "-c", CLI, *argv], cwd=REPO,
                          capture_output=True, text=True, env=_env(code))
    loaded = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in done.stderr.splitlines()
              if line.startswith("import time:")}
    return [name for name in HEAVY if name in loaded]


def _env(code: Path | None) -> dict[str, str]:
    env = {**os.environ, "COLUMNS": "120", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.pop("PYTHONPATH", None)
    return {**env, "PYTHONPATH": str(code)} if code is not None else env


def baseline_code(commit: str, folder: Path) -> Path:
    """`commit`'s samora_kit and plugins in `folder`, importable as the editable install names them."""
    archive = subprocess.run(["git", "archive", commit, "samora_kit", "plugins"], cwd=REPO, capture_output=True,
                             check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    (folder / "samora_kit_plugins").symlink_to("plugins")
    return folder


def measure(argv: list[str], codes: dict[str, Path | None], repeats: int) -> dict[str, list[float]]:
    """`repeats` timed runs per code, alternating between them, after one untimed run each (disk cache). A
    baseline that cannot run the command (a recipe using what it lacks) gets no times; this checkout must."""
    runnable = {}
    for name, code in codes.items():
        try:
            seconds(argv, code)
            runnable[name] = code
        except CommandFailed as failed:
            if name == "now":
                sys.exit(str(failed))
            print(f"{name}: {str(failed).splitlines()[-1].strip()}", flush=True)
    times: dict[str, list[float]] = {name: [] for name in codes}
    for _ in range(repeats):
        for name, code in runnable.items():
            times[name].append(seconds(argv, code))
    return times


def table(rows: list[tuple[list[str], dict[str, list[float]], dict[str, list[str]]]], baseline: str | None) -> str:
    def figures(times: list[float]) -> str:
        return f"{statistics.median(times):.2f} | {min(times):.2f}" if times else "cannot run it | —"

    head = "| command | " + (f"{baseline}: median s | min s | now: " if baseline else "") + \
           f"median s | min s | within {TARGET_S:g} s | model libraries imported |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for argv, times, heavy in rows:
        now = statistics.median(times["now"])
        libraries = ", ".join(heavy["now"]) or "none"
        if baseline:
            libraries = f"{', '.join(heavy['baseline']) or 'none'} → {libraries}"
        lines.append(f"| `samora-kit {' '.join(argv)}` | " + (f"{figures(times['baseline'])} | " if baseline else "")
                     + f"{figures(times['now'])} | {'yes' if now <= TARGET_S else 'no'} | {libraries} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=list(SMALL_RECIPES), help="recipes to validate")
    p.add_argument("--repeats", type=int, default=7, help="timed runs of each command (after one untimed run)")
    p.add_argument("--baseline", metavar="COMMIT", help="also time this commit's code, run for run")
    p.add_argument("--write-doc", type=Path, help="also write the table into this markdown file (block cli-speed)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        codes = {"now": None}
        if args.baseline:
            codes = {"baseline": baseline_code(args.baseline, Path(folder)), **codes}
        rows = []
        for argv in commands(args.recipes):
            times = measure(argv, codes, args.repeats)
            heavy = {name: heavy_imports(argv, code) for name, code in codes.items()}
            rows.append((argv, times, heavy))
            print(f"samora-kit {' '.join(argv)}: " + ", ".join(
                f"{name} median {statistics.median(t):.2f} s, min {min(t):.2f} s" for name, t in times.items() if t),
                flush=True)
    now = "this checkout" + (f" against {args.baseline}" if args.baseline else "")
    text = (f"{now}: {args.repeats} runs of each command after one untimed run, {os.cpu_count()} CPUs, load average "
            f"{os.getloadavg()[0]:.2f} at the end, Python {sys.version.split()[0]}\n\n"
            + table(rows, args.baseline))
    print(f"\n{text}")
    if args.write_doc:
        from samora_benchmarks.common import write_doc_block  # imports torch: only when writing

        write_doc_block(args.write_doc, "cli-speed", text)


if __name__ == "__main__":
    main()
