#!/usr/bin/env bash
# One prepared run for a lent GPU machine (about 8 minutes; every step has its own time limit):
#   1. tests/gpu: the engine on CUDA vs HF on CUDA; 1P+1D (KV over gRPC, over gloo, and over NCCL
#      where there are two GPUs) and colocated clusters on CUDA vs the single-process engine on
#      CUDA; the chunk cache on CUDA                                   -> gpu_tests.log
#   2. benchmarks/gpu_check.py: the 1b preset in bf16, engine vs HF (greedy, prefill, decode
#      tokens/s at batch 1-64, FLOP and bandwidth utilisation)         -> engine_gpu.json
#   3. benchmarks/gpu_serving.py: the 1b preset served on CUDA, colocated vs 1P+1D (gRPC, gloo), under
#      `splitserve bench` at concurrency 1/8/32                        -> serving_gpu.json
# Files go to $OUT (the device tool's folder) or benchmarks/results/gpu_run; steps.log says how
# each step ended. On a machine whose image lacks some of the project's packages, carry them as
# wheels in .whl/ (scripts/gpu_wheels.sh downloads them). Skips cleanly (exit 0) where there is no GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu_check: no nvidia-smi here; skipped"
  exit 0
fi
OUTDIR=${OUT:-benchmarks/results/gpu_run}
mkdir -p "$OUTDIR"
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 SPLITSERVE_CACHE=${SPLITSERVE_CACHE:-/tmp/splitserve-cache}
MODEL=/tmp/splitserve-1b
LOG=$OUTDIR/steps.log
step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log how it ended
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  timeout -k 10 "$limit" "$@" >"$OUTDIR/$name.log" 2>&1
  rc=$?
  echo "$name: rc=$rc in $((SECONDS - start)) s" | tee -a "$LOG"
}
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c 'import torch, transformers, grpc; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__, "grpc", grpc.__version__)'; } >"$LOG" 2>&1
cat "$LOG"
$PY -m splitserve.cli make-model --preset 1b --out "$MODEL" >"$OUTDIR/make_model.log" 2>&1 &
MAKER=$!
step gpu_tests 150 $PY -m pytest -q -p no:cacheprovider -rA tests/gpu
wait $MAKER; echo "make-model 1b: rc=$?" | tee -a "$LOG"
step engine_gpu 180 $PY benchmarks/gpu_check.py --model "$MODEL" --out "$OUTDIR/engine_gpu.json"
step serving_gpu 300 $PY benchmarks/gpu_serving.py --model "$MODEL" --out "$OUTDIR/serving_gpu.json"
cat "$LOG"
