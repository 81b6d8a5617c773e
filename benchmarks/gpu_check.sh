#!/usr/bin/env bash
# One prepared run for a lent GPU machine (must finish in under 5 minutes):
#   engine vs HF on CUDA (1b preset, bf16), FLOP and bandwidth utilisation -> benchmarks/results/engine_gpu.json
# Skips cleanly (exit 0) where there is no CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu_check: no nvidia-smi here; skipped"
  exit 0
fi
[ -x .venv/bin/python ] || make venv
.venv/bin/python benchmarks/gpu_check.py
if [ -n "${OUT:-}" ]; then cp benchmarks/results/engine_gpu.json "$OUT/"; fi
