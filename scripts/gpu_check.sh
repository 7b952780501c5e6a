#!/usr/bin/env bash
# One script for a CUDA machine, in at most ~8 minutes: both Triton kernels against `dense` (fp32, bf16); merged
# storage against the per-call path, bit for bit;
# every gather-gradient path and the calibrated `auto` timed at LLaMA-2-7B layer shapes (bf16 ranks 8/16/64,
# fp32 ranks 8/64), with the kernels' static figures (registers, spills, shared memory); and whole optimizer
# steps at 7B layer shapes (4 layers) for the floor, LoRA (dropout 0.1 and 0), SpIEL-AG and SpIEL-MA (with merged
# storage, and without it: *_applied).
# Everything printed, plus the JSON, lands in RESULTS_DIR. Needs only torch, triton, transformers, peft and
# this repo (run from anywhere; no install needed).
# Usage: scripts/gpu_check.sh RESULTS_DIR
set -uo pipefail
out="${1:?usage: scripts/gpu_check.sh RESULTS_DIR}"
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
exec > >(tee "$out/gpu_check.log") 2>&1
status=0
start=$SECONDS
stage() { echo; echo "== $1  (t=$((SECONDS - start))s)"; }
stage "nvidia-smi"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" || true
stage "triton kernels vs dense"
timeout 60 python scripts/check_triton_cuda.py || status=1
stage "merged storage vs the per-call path, bit for bit (fp32, bf16, 7B layer shapes)"
timeout 60 python scripts/check_merged_storage.py || status=1
stage "gather-gradient paths, bf16 (calibrated auto; static figures)"
timeout 100 python scripts/bench_kernel.py --tokens 2048,512 --ranks 8,16,64 --json "$out/bench_kernel_bf16.json" || status=1
stage "Triton kernel configurations, bf16, 4096x4096, 2048 tokens, ranks 8 and 64"
timeout 45 python scripts/bench_kernel.py --sweep --json "$out/bench_kernel_sweep.json" || status=1
stage "gather-gradient paths, fp32"
timeout 35 python scripts/bench_kernel.py --dtype float32 --ranks 8,64 --tokens 2048 --no-static \
  --paths blocked,triton,triton_tiles,auto --json "$out/bench_kernel_fp32.json" || status=1
stage "whole optimizer steps, 7B layer shapes x 4 layers, bf16, seq 1024"
timeout 180 python scripts/bench_step.py --gpu --layers 4 --methods floor,lora0,lora,ag,ma,ag_applied,ma_applied --periods 1 \
  --json "$out/bench_step.json" || status=1
stage "exit status $status"
exit $status
