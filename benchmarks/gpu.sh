#!/usr/bin/env bash
# One short CUDA check (a few minutes): the SAMed training step at batch 32 in bf16 and
# inference per volume, both ViT-B at 224 px with random weights, then the quick start on CUDA.
# Needs samora-kit installed (pip install -e .); prints the figures recorded in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"
python3 benchmarks/train_step.py recipes/samed.toml --device cuda --batch 32 --steps 20 --warmup 3
python3 benchmarks/infer.py recipes/samed.toml --device cuda --volume 128,512,512 --volumes 3
samora-kit run recipes/quickstart.toml run.device=cuda run.output_dir="${OUT:-/tmp}/quickstart-cuda"
