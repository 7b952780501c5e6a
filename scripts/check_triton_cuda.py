#!/usr/bin/env python
"""The Triton gather-gradient kernels: compiled for the GPU, and on a CUDA machine checked against ``dense``.

    python scripts/check_triton_cuda.py --compile-only   # any machine: compile every kernel for sm_80 and
                                                         # sm_90, print registers / spills / shared memory
    python scripts/check_triton_cuda.py                  # CUDA: both kernels against dense, fp32 and bf16

The compile check exits non-zero when a kernel fails to compile, spills, or needs more registers than its
limit (``MAX_REGISTERS``). The CUDA check covers the values' gradient and the input gradient through the
real layer for several shapes (odd ones included) and exits non-zero on any mismatch. Needs only torch,
triton and ``spiel.delta``.
"""

from __future__ import annotations

import os
import sys

import torch

from spiel.delta import gather_grad, random_subset, sparse_delta_linear

CASES = [
    (37, 29, 150, 7),
    (4096, 4096, 64 * 8192, 2048),
    (11008, 4096, 8 * 15104, 512),
    (4096, 11008, 16 * 15104, 300),
]


# Registers per thread allowed: the gather kernel is memory-bound and needs occupancy (at 128, four
# 128-thread programs per SM); the tile kernel is a tensor-core GEMM tile that runs one or two per SM.
MAX_REGISTERS = {"gather": 128, "rows": 128, "tiles": 255}


def compile_only() -> int:
    os.environ.pop("TRITON_INTERPRET", None)
    from spiel.delta.triton_static import compile_all

    bad = 0
    for fig in compile_all():
        problems = []
        if fig.local_bytes:
            problems.append("spills")
        if fig.registers > MAX_REGISTERS[fig.kernel]:
            problems.append(f"over {MAX_REGISTERS[fig.kernel]} registers")
        bad += bool(problems)
        print(fig.line() + (f"  <- {', '.join(problems)}" if problems else ""), flush=True)
    return 1 if bad else 0


def check(out_f, in_f, k, tokens, dtype, device, path) -> bool:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, in_f, generator=gen).to(device=device, dtype=dtype)
    g = torch.randn(tokens, out_f, generator=gen).to(device=device, dtype=dtype)
    w = (torch.randn(out_f, in_f, generator=gen) * 0.02).to(device=device, dtype=dtype)
    idx = random_subset(out_f * in_f, k, gen).to(device=device, dtype=torch.int32)
    # Reference in fp32 from the same (possibly bf16-rounded) inputs.
    ref = (g.float().t() @ x.float()).view(-1)[idx.long()]
    got = gather_grad(x, g, idx, out_f, in_f, path)
    scale = ref.abs().max().item()
    err = (got - ref).abs().max().item() / scale
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    # Through the autograd function: values' and input gradients, triton vs dense.
    grads = {}
    for p in ("dense", path):
        xs = x.clone().requires_grad_(True)
        vals = torch.zeros(k, device=device, requires_grad=True)
        y = sparse_delta_linear(xs, w, idx, vals, grad_path=p)
        y.backward(g)
        grads[p] = (xs.grad.float(), vals.grad.float())
    err_x = ((grads["dense"][0] - grads[path][0]).abs().max() / grads["dense"][0].abs().max()).item()
    err_v = ((grads["dense"][1] - grads[path][1]).abs().max() / grads["dense"][1].abs().max()).item()
    ok = err < tol and err_x < tol and err_v < tol
    print(
        f"{'OK  ' if ok else 'FAIL'} {path:<12} {out_f}x{in_f} k={k} tokens={tokens} {dtype}: "
        f"kernel rel err {err:.2e}, layer values {err_v:.2e}, input {err_x:.2e} (tol {tol:g})",
        flush=True,
    )
    return ok


def main() -> int:
    if "--compile-only" in sys.argv[1:]:
        return compile_only()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    device = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    results = [
        check(*case, dtype, device, path)
        for path in ("triton", "triton_rows", "triton_tiles")
        for dtype in (torch.float32, torch.bfloat16)
        for case in CASES
    ]
    print(f"{sum(results)} of {len(results)} checks passed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
