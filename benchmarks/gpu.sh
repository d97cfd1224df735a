#!/usr/bin/env bash
# One prepared CUDA check (about 6 minutes on one H200; fits in 8): the kit's SAMed and SAMora training
# steps at batch 32 in bf16, eager and compiled; a bare timm ViT-B/16 step (the ceiling for this encoder
# size); a real run's step against the pure step; inference per 128x512x512 volume in fp32 and bf16;
# then every ratio against its target (benchmarks/samora_benchmarks/gpu_summary.py). Random weights, no data needed.
# Needs samora-kit and its benchmarks package installed (pip install -e '.[all]' -e ./benchmarks);
# docs/benchmarks.md records what it printed.
#
#   benchmarks/gpu.sh world   instead builds the miniature world at its GPU scale (issue 11: more scenes,
#                             steps and prompts; benchmarks/samora_benchmarks/world/build.py SCALES["gpu"]) in runs/world and
#                             runs its few-shot arms on both targets. Not yet timed on a GPU: give it the
#                             machine's longest slot, and rerun it to continue (every stage and run is cached).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = world ]; then
  python3 -m samora_benchmarks.world.build --scale gpu --device cuda
  for dataset in hippocampus acdc; do
    python3 -m samora_benchmarks.fewshot --world --arms world --dataset "$dataset" --docs-block "world-$dataset-gpu"
  done
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"
python3 -m samora_benchmarks.gpu_summary --device cuda --batch 32 --steps 20 --volume 128,512,512 --workers 8
