"""Every figure of issue 13's GPU table in one run, each measured in its own process, then the ratios
against their targets. benchmarks/gpu.sh runs it on a CUDA machine (about 6 minutes on one H200):

    python -m samora_benchmarks.gpu_summary                      # CUDA: ViT-B 224, batch 32, bf16
    python -m samora_benchmarks.gpu_summary --device cpu --samed recipes/quickstart_samed.toml \\
        --samora recipes/quickstart.toml --batch 2 --steps 2 --volume 8,128,128 --no-compile   # a dry run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

def measure(script: str, *args: str) -> dict:
    """Run one benchmark script of this package ("train_step.py"); echo its output; return its `result` line."""
    done = subprocess.run([sys.executable, "-m", f"{__package__}.{Path(script).stem}", *args], capture_output=True,
                          text=True)
    print(done.stdout, end="", flush=True)
    if done.returncode != 0:
        sys.exit(f"{script} {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1].removeprefix("result "))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--samed", default="recipes/samed.toml")
    p.add_argument("--samora", default="recipes/samora.toml")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--volume", default="128,512,512")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--no-compile", action="store_true", help="skip the compiled steps (a CPU dry run)")
    args = p.parse_args()
    common = ["--device", args.device, "--batch", str(args.batch), "--steps", str(args.steps), "--amp", "bf16"]
    modes = ["eager"] + ([] if args.no_compile else ["compiled"])
    step, vit = {}, {}
    for mode in modes:
        flag = ["--compile"] if mode == "compiled" else []
        step["samed", mode] = measure("train_step.py", args.samed, *common, *flag)
        step["samora", mode] = measure("train_step.py", args.samora, *common, *flag)
        vit[mode] = measure("vit_ceiling.py", *common, *flag)
    epoch = measure("epoch.py", args.samed, "--device", args.device, "--batch", str(args.batch),
                    "--steps", str(args.steps), "--workers", str(args.workers))
    infer = {precision: measure("infer.py", args.samed, "--device", args.device, "--volume", args.volume,
                                "--volumes", "2", "--precision", precision) for precision in ("fp32", "bf16")}

    rows = []
    for mode in modes:
        rows.append((f"kit SAMed TFLOP/s / bare ViT-B TFLOP/s ({mode})",
                     step["samed", mode]["tflops"] / vit[mode]["tflops"], ">= 0.8"))
        rows.append((f"SAMora step / SAMed step ({mode})",
                     step["samora", mode]["step_ms"] / step["samed", mode]["step_ms"], "<= 1.25"))
    if not args.no_compile:
        rows.append(("SAMed compiled step / eager step",
                     step["samed", "compiled"]["step_ms"] / step["samed", "eager"]["step_ms"], "< 1"))
    rows.append((f"run step / pure step (SAMed, {args.workers} workers)",
                 epoch[f"run_step_ms_workers{args.workers}"] / epoch["pure_step_ms"], "<= 1.1"))
    rows.append(("inference bf16 / fp32 per volume",
                 infer["bf16"]["seconds_per_volume"] / infer["fp32"]["seconds_per_volume"], "< 1"))
    print("\n| figure | measured | target |\n|---|---|---|")
    for name, value, target in rows:
        print(f"| {name} | {value:.2f}x | {target} |")
    for mode in modes:
        print(f"| SAMed step ({mode}) | {step['samed', mode]['step_ms']:.1f} ms, "
              f"{step['samed', mode]['tflops']:.1f} TFLOP/s | |")
        print(f"| bare ViT-B step ({mode}) | {vit[mode]['step_ms']:.1f} ms, {vit[mode]['tflops']:.1f} TFLOP/s | |")
    for precision, row in infer.items():
        print(f"| inference per {args.volume} volume ({precision}) | {row['seconds_per_volume']:.2f} s | |")


if __name__ == "__main__":
    main()
