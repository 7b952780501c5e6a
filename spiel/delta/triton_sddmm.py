"""Triton gather-dot kernel for the values' gradient (the CUDA gather-gradient path).

One program computes BLOCK_K consecutive active indices: it walks the token axis in BLOCK_T steps,
loads the ``[BLOCK_T, BLOCK_K]`` tiles ``X[t, col_j]`` and ``dY[t, row_j]`` by pointer arithmetic on
the loaded row/col indices, multiplies in fp32 and reduces over tokens. Inputs are passed transposed
(``Xᵀ [in, T]``, ``dYᵀ [out, T]``) so each index reads a contiguous run of tokens (coalesced loads),
and because indices are sorted row-major, neighbouring lanes share dY rows (cache hits).

Runs on CPU under ``TRITON_INTERPRET=1`` (set before triton is imported) for the tests; the kernel
loads any float dtype and computes in fp32, which is also what the interpreter needs for bf16.
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def sddmm_kernel(
        xt_ptr,  # [in, T]
        gt_ptr,  # [out, T]
        idx_ptr,  # [k] flat row-major indices
        out_ptr,  # [k] fp32
        k,
        tokens,
        in_features,
        stride_x,
        stride_g,
        BLOCK_K: tl.constexpr,
        BLOCK_T: tl.constexpr,
    ):
        pid = tl.program_id(0)
        lanes = pid * BLOCK_K + tl.arange(0, BLOCK_K)
        lane_ok = lanes < k
        flat = tl.load(idx_ptr + lanes, mask=lane_ok, other=0).to(tl.int64)
        rows = flat // in_features
        cols = flat - rows * in_features
        acc = tl.zeros([BLOCK_K], dtype=tl.float32)
        for t0 in range(0, tokens, BLOCK_T):
            t = t0 + tl.arange(0, BLOCK_T)
            ok = lane_ok[:, None] & (t[None, :] < tokens)
            xs = tl.load(xt_ptr + cols[:, None] * stride_x + t[None, :], mask=ok, other=0.0).to(tl.float32)
            gs = tl.load(gt_ptr + rows[:, None] * stride_g + t[None, :], mask=ok, other=0.0).to(tl.float32)
            acc += tl.sum(xs * gs, axis=1)
        tl.store(out_ptr + lanes, acc, mask=lane_ok)

    return sddmm_kernel


def triton_gather_grad(
    x2d: torch.Tensor, g2d: torch.Tensor, indices: torch.Tensor, in_features: int, block_k: int = 32
) -> torch.Tensor:
    """``(dYᵀ X).view(-1)[indices]`` in fp32 by the Triton kernel; extra memory O(k + T·(in+out))."""
    tokens = x2d.shape[0]
    k = indices.numel()
    out = torch.empty(k, dtype=torch.float32, device=x2d.device)
    if k == 0:
        return out
    xt = x2d.t().contiguous()
    gt = g2d.t().contiguous()
    block_t = 64 if tokens >= 64 else max(16, 1 << (max(tokens, 1) - 1).bit_length())
    grid = (triton_cdiv(k, block_k),)
    _kernel()[grid](
        xt, gt, indices.contiguous(), out, k, tokens, in_features, xt.stride(0), gt.stride(0),
        BLOCK_K=block_k, BLOCK_T=block_t,
    )
    return out


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b
