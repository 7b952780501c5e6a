#!/usr/bin/env bash
# One script for a CUDA machine: Triton kernel correctness against `dense` (fp32 and bf16), then the
# full-size gather-gradient benchmark. Everything printed, plus the JSON, lands in RESULTS_DIR.
# Needs only torch, triton and this repo's spiel.delta (run from the repo root; no install needed).
# Usage: scripts/gpu_check.sh RESULTS_DIR
set -uo pipefail
out="${1:?usage: scripts/gpu_check.sh RESULTS_DIR}"
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec > >(tee "$out/gpu_check.log") 2>&1
status=0
echo "== nvidia-smi"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
echo "== triton kernel vs dense"
timeout 120 python scripts/check_triton_cuda.py || status=1
echo "== gather-gradient benchmark (bf16)"
timeout 150 python scripts/bench_kernel.py --json "$out/bench_kernel_bf16.json" || status=1
echo "== gather-gradient benchmark (fp32)"
timeout 90 python scripts/bench_kernel.py --dtype float32 --ranks 8,64 --tokens 2048 \
  --json "$out/bench_kernel_fp32.json" || status=1
if [ -f scripts/bench_step.py ]; then
  echo "== step-time benchmark (7B shapes, bf16)"
  timeout 240 python scripts/bench_step.py --gpu --json "$out/bench_step.json" || status=1
fi
echo "== exit status $status"
exit $status
