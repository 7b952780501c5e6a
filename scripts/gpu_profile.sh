#!/usr/bin/env bash
# Where SpIEL's GPU step time goes, before and after batching, in one command of at most 8 minutes of device time
# (the stages' timeouts add up to 465 s): the Triton kernels against `dense`; the gather-gradient paths at
# LLaMA-2-7B layer shapes (bf16, ranks 8/16/64, with each path's roofline); whole optimizer steps at 7B layer
# shapes x 4 layers, bf16, seq 1024 (floor, LoRA dropout 0 and 0.1, SpIEL-AG and -MA batched and one by one:
# *_loop); then a torch.profiler record of one period of each SpIEL method and LoRA, broken down by kind of step
# (plain, AG's probe and estimation steps, reselection) into GEMMs, the values' gradient, the probe, index
# passes, optimizer, selection, other kernels and idle time, with the host's launch and sync time.
# Writes under RESULTS_DIR: gpu_profile.log (everything printed), bench_kernel_bf16.json, bench_step.json,
# profile/<method>-r0.txt (operator table), profile/*.breakdown.json, profile/breakdown.md and the Chrome
# traces profile/*.trace.json.gz. Needs only torch, triton, transformers, peft and this repo.
# Usage: scripts/gpu_profile.sh RESULTS_DIR
set -uo pipefail
out="${1:?usage: scripts/gpu_profile.sh RESULTS_DIR}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 WANDB_MODE=disabled
unset TRITON_INTERPRET
exec > >(tee "$out/gpu_profile.log") 2>&1
status=0
start=$SECONDS
stage() { echo; echo "== $1  (t=$((SECONDS - start))s)"; }
stage "nvidia-smi"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" || true
stage "triton kernels vs dense"
timeout 45 python scripts/check_triton_cuda.py || status=1
stage "gather-gradient paths, bf16, 2048 tokens (calibrated auto; roofline)"
timeout 80 python scripts/bench_kernel.py --tokens 2048 --ranks 8,16,64 --no-static \
  --json "$out/bench_kernel_bf16.json" || status=1
stage "whole optimizer steps, 7B layer shapes x 4 layers, bf16, seq 1024 (batched and one by one)"
timeout 190 python scripts/bench_step.py --gpu --layers 4 --methods floor,lora0,lora,ag,ma,ag_loop,ma_loop \
  --periods 1 --json "$out/bench_step.json" || status=1
stage "torch.profiler breakdown of one period, by kind of step"
timeout 150 python scripts/bench_step.py --gpu --layers 4 --methods lora0,ag,ma,ag_loop,ma_loop --periods 1 \
  --reselection-steps 10 --estimation-steps 3 \
  --warmup 2 --profile "$out/profile" --json "$out/profile_step.json" || status=1
gzip -f "$out"/profile/*.trace.json 2>/dev/null || true
stage "exit status $status"
exit $status
