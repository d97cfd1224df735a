#!/usr/bin/env bash
# One short CUDA check (a few minutes): training step at batch 32 in bf16 and inference per volume
# for SAMed and SAMora stage 2 (ViT-B, 224 px, random weights), then the SAMed quick start on CUDA.
# Needs samora-kit installed (pip install -e .); prints the figures recorded in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"
python3 benchmarks/train_step.py recipes/samed.toml recipes/samora.toml --device cuda --batch 32 --steps 20 --warmup 3
python3 benchmarks/infer.py recipes/samed.toml recipes/samora.toml --device cuda --volume 128,512,512 --volumes 3
samora-kit run recipes/quickstart_samed.toml run.device=cuda run.output_dir="${OUT:-/tmp}/quickstart-samed-cuda"
