"""Triton kernels for the values' gradient on CUDA: ``grad[j] = sum_t X[t, col_j] · dY[t, row_j]``.

Three kernels, all exact sums in fp32 over the tokens; ``auto`` measures which is fastest (``grad_paths.py``):

* ``triton`` (gather-dot): a program per ``BLOCK_K`` consecutive active indices walks the tokens in
  ``BLOCK_T`` steps and reads ``Xᵀ[col_j, t]`` and ``dYᵀ[row_j, t]`` by gather. Reads ``2·k·T`` values,
  so it wins only at small ``k`` (inputs are transposed first, so each index reads contiguous tokens).
* ``triton_rows`` (gather-dot by rows): a program per row of the weight takes that row's entries (one
  contiguous run, the indices being sorted) ``BLOCK_K`` at a time, loads the row's ``dYᵀ`` tokens once per
  token step and each entry's ``Xᵀ`` tokens by gather: ``(k + out)·T`` values read instead of ``2·k·T``,
  and the re-read ``Xᵀ`` rows (``in·T``, 16 MiB at 4096 features and 2048 bf16 tokens) fit in L2.
  Roofline, bytes that must come from HBM: the two transposed copies (read and write), ``dYᵀ`` and ``Xᵀ``
  once each, and the index and result vectors: ``e·T·(3·(in + out)) + 8·k`` (``e`` bytes per element);
  the ``k·T·e`` re-reads of ``Xᵀ`` rows are L2 traffic (``scripts/bench_kernel.py`` prints both bounds).
* ``triton_tiles`` (tile GEMM with a sampled epilogue): a program per ``BLOCK_R × BLOCK_C`` tile of the
  ``[out, in]`` gradient stages the token tiles of dY and X once, multiplies them on the tensor cores
  (``tl.dot``), and writes only the tile's active entries: no ``[out, in]`` matrix is ever stored. The
  sorted indices give each tile row its entries as one contiguous run (``tile_pointers``), so a tile
  with no active entries does no work at all.

Both run on CPU under ``TRITON_INTERPRET=1`` (set before triton is imported) for the tests; under the
interpreter the tiles are upcast to fp32 (its bf16 ``tl.dot`` is wrong), on a GPU they are not.
``KERNEL_CONFIGS`` are the block sizes used, checked by ``scripts/check_triton_cuda.py --compile-only``
(registers, spills, shared memory for sm_80 and sm_90) in the test suite.
"""

from __future__ import annotations

import functools
import os

import torch

# Block sizes and warps per kernel, chosen with the static figures of `check_triton_cuda.py --compile-only`
# (sm_90, bf16, launches specialized as at LLaMA shapes). The gather kernel is memory-bound and wants many
# loads in flight: 32x128 tiles over 4 warps take 48 registers per thread (10 programs per SM); the old
# 32x64 tiles with int64 address arithmetic took 168 (3 programs). The tile kernel is a tensor-core GEMM
# tile (one or two programs per SM by design): 128x128 over 32-token steps, 4 stages, 144 registers and
# 65 KiB of shared memory, no spills; fp32 inputs fit the 4 stages on sm_80 (128 KiB) too.
KERNEL_CONFIGS = {
    "gather": dict(BLOCK_K=32, BLOCK_T=128, num_warps=4),
    # ~16 entries per row at rank 8 on 4096x4096 (~128 at rank 64: a few passes over the row's dY tokens)
    "rows": dict(BLOCK_K=16, BLOCK_T=128, num_warps=4),
    "tiles": dict(BLOCK_R=128, BLOCK_C=128, BLOCK_T=32, num_warps=8, num_stages=4),
}


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=1)
def kernels() -> dict:
    from spiel.extras import require

    require("triton", "grad_path=triton (the fused CUDA kernel)")
    import triton
    import triton.language as tl

    @triton.jit
    def gather_kernel(
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
        WIDE: tl.constexpr,  # int64 offsets (a transposed input of 2**31 or more elements)
    ):
        pid = tl.program_id(0)
        lanes = pid * BLOCK_K + tl.arange(0, BLOCK_K)
        lane_ok = lanes < k
        flat = tl.load(idx_ptr + lanes, mask=lane_ok, other=0)
        flat = flat.to(tl.int64) if WIDE else flat.to(tl.int32)
        rows = flat // in_features
        cols = flat - rows * in_features
        x_rows = xt_ptr + cols * stride_x
        g_rows = gt_ptr + rows * stride_g
        acc = tl.zeros([BLOCK_K], dtype=tl.float32)
        for t0 in range(0, tokens, BLOCK_T):
            t = t0 + tl.arange(0, BLOCK_T)
            ok = lane_ok[:, None] & (t[None, :] < tokens)
            xs = tl.load(x_rows[:, None] + t[None, :], mask=ok, other=0.0).to(tl.float32)
            gs = tl.load(g_rows[:, None] + t[None, :], mask=ok, other=0.0).to(tl.float32)
            acc += tl.sum(xs * gs, axis=1)
        tl.store(out_ptr + lanes, acc, mask=lane_ok)

    @triton.jit
    def rows_kernel(
        xt_ptr,  # [in, T]
        gt_ptr,  # [out, T]
        idx_ptr,  # [k] sorted flat row-major indices
        crow_ptr,  # [out + 1] first entry of each row (CSR row pointers)
        out_ptr,  # [k] fp32
        tokens,
        in_features,
        stride_x,
        stride_g,
        BLOCK_K: tl.constexpr,
        BLOCK_T: tl.constexpr,
        WIDE: tl.constexpr,  # int64 offsets (a transposed input of 2**31 or more elements)
    ):
        row = tl.program_id(0)
        start = tl.load(crow_ptr + row)
        end = tl.load(crow_ptr + row + 1)
        row_w = row.to(tl.int64) if WIDE else row
        g_row = gt_ptr + row_w * stride_g
        row_base = row.to(tl.int64) * in_features
        for j0 in range(start, end, BLOCK_K):
            lanes = j0 + tl.arange(0, BLOCK_K)
            lane_ok = lanes < end
            flat = tl.load(idx_ptr + lanes, mask=lane_ok, other=0).to(tl.int64)
            cols = flat - row_base
            cols = cols if WIDE else cols.to(tl.int32)
            x_rows = xt_ptr + cols * stride_x
            acc = tl.zeros([BLOCK_K], dtype=tl.float32)
            for t0 in range(0, tokens, BLOCK_T):
                t = t0 + tl.arange(0, BLOCK_T)
                t_ok = t < tokens
                gs = tl.load(g_row + t, mask=t_ok, other=0.0).to(tl.float32)
                xs = tl.load(
                    x_rows[:, None] + t[None, :], mask=lane_ok[:, None] & t_ok[None, :], other=0.0
                ).to(tl.float32)
                acc += tl.sum(xs * gs[None, :], axis=1)
            tl.store(out_ptr + lanes, acc, mask=lane_ok)

    @triton.jit
    def tiles_kernel(
        x_ptr,  # [T, in], rows contiguous
        g_ptr,  # [T, out], rows contiguous
        idx_ptr,  # [k] sorted flat row-major indices
        ptr_ptr,  # [out, n_col_tiles + 1]: first entry of each (row, column tile)
        out_ptr,  # [k] fp32
        tokens,
        out_features,
        in_features,
        stride_x,
        stride_g,
        stride_p,
        BLOCK_R: tl.constexpr,
        BLOCK_C: tl.constexpr,
        BLOCK_T: tl.constexpr,
        GROUP_R: tl.constexpr,
        UPCAST: tl.constexpr,  # fp32 tiles (the interpreter) instead of the input dtype
        IEEE: tl.constexpr,  # fp32 inputs: full-precision dot rather than tf32
    ):
        # Grouped tile order: GROUP_R row blocks share their column tiles of X while in L2.
        pid = tl.program_id(0)
        n_r = tl.cdiv(out_features, BLOCK_R)
        n_c = tl.cdiv(in_features, BLOCK_C)
        per_group = GROUP_R * n_c
        first_r = (pid // per_group) * GROUP_R
        group_rows = tl.minimum(n_r - first_r, GROUP_R)
        tile_r = first_r + (pid % per_group) % group_rows
        tile_c = (pid % per_group) // group_rows

        rows = tile_r * BLOCK_R + tl.arange(0, BLOCK_R)
        row_ok = rows < out_features
        start = tl.load(ptr_ptr + rows * stride_p + tile_c, mask=row_ok, other=0)
        count = tl.load(ptr_ptr + rows * stride_p + tile_c + 1, mask=row_ok, other=0) - start
        most = tl.max(count, axis=0)
        if most > 0:
            cols = tile_c * BLOCK_C + tl.arange(0, BLOCK_C)
            col_ok = cols < in_features
            t_range = tl.arange(0, BLOCK_T)
            acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
            for t0 in range(0, tokens, BLOCK_T):
                t = t0 + t_range
                t_ok = t < tokens
                # dYᵀ tile [BLOCK_R, BLOCK_T], loaded as such (rows contiguous in memory) so that it can be
                # staged in shared memory and pipelined; a register transpose would not be.
                g = tl.load(
                    g_ptr + rows[:, None] + t[None, :] * stride_g,
                    mask=row_ok[:, None] & t_ok[None, :],
                    other=0.0,
                )
                x = tl.load(
                    x_ptr + t[:, None] * stride_x + cols[None, :],
                    mask=t_ok[:, None] & col_ok[None, :],
                    other=0.0,
                )
                if UPCAST:
                    g = g.to(tl.float32)
                    x = x.to(tl.float32)
                if IEEE:
                    acc = tl.dot(g, x, acc, input_precision="ieee")
                else:
                    acc = tl.dot(g, x, acc)
            # The epilogue: row by row of the tile, its j-th active entry, picked out of the register tile.
            local = tl.arange(0, BLOCK_C)
            row_base = rows.to(tl.int64) * in_features + tile_c * BLOCK_C
            for j in range(0, most):
                pos = start + j
                ok = j < count
                flat = tl.load(idx_ptr + pos, mask=ok, other=0).to(tl.int64)
                col = (flat - row_base).to(tl.int32)
                value = tl.sum(tl.where(local[None, :] == col[:, None], acc, 0.0), axis=1)
                tl.store(out_ptr + pos, value, mask=ok)

    return {"gather": gather_kernel, "rows": rows_kernel, "tiles": tiles_kernel}


def triton_gather_grad(
    x2d: torch.Tensor, g2d: torch.Tensor, indices: torch.Tensor, in_features: int
) -> torch.Tensor:
    """``(dYᵀ X).view(-1)[indices]`` in fp32 by the gather-dot kernel; extra memory O(k + T·(in+out))."""
    tokens = x2d.shape[0]
    k = indices.numel()
    out = torch.empty(k, dtype=torch.float32, device=x2d.device)
    if k == 0:
        return out
    cfg = KERNEL_CONFIGS["gather"]
    xt = x2d.t().contiguous()
    gt = g2d.t().contiguous()
    wide = max(xt.numel(), gt.numel()) >= 2**31
    grid = (triton_cdiv(k, cfg["BLOCK_K"]),)
    kernels()["gather"][grid](
        xt,
        gt,
        indices.contiguous(),
        out,
        k,
        tokens,
        in_features,
        xt.stride(0),
        gt.stride(0),
        BLOCK_K=cfg["BLOCK_K"],
        BLOCK_T=cfg["BLOCK_T"],
        WIDE=wide,
        num_warps=cfg["num_warps"],
    )
    return out


def triton_rows_grad(
    x2d: torch.Tensor, g2d: torch.Tensor, indices: torch.Tensor, out_features: int, in_features: int
) -> torch.Tensor:
    """``(dYᵀ X).view(-1)[indices]`` in fp32 by the row kernel (sorted ``indices``); extra memory
    O(k + out + T·(in+out))."""
    tokens = x2d.shape[0]
    k = indices.numel()
    out = torch.empty(k, dtype=torch.float32, device=x2d.device)
    if k == 0:
        return out
    cfg = KERNEL_CONFIGS["rows"]
    xt = x2d.t().contiguous()
    gt = g2d.t().contiguous()
    wide = max(xt.numel(), gt.numel()) >= 2**31
    crow = torch.zeros(out_features + 1, dtype=torch.int32 if k < 2**31 else torch.int64, device=x2d.device)
    rows = torch.div(indices, in_features, rounding_mode="floor")
    crow[1:] = torch.bincount(rows, minlength=out_features).cumsum(0)
    kernels()["rows"][(out_features,)](
        xt,
        gt,
        indices.contiguous(),
        crow,
        out,
        tokens,
        in_features,
        xt.stride(0),
        gt.stride(0),
        BLOCK_K=cfg["BLOCK_K"],
        BLOCK_T=cfg["BLOCK_T"],
        WIDE=wide,
        num_warps=cfg["num_warps"],
    )
    return out


def tile_pointers(indices: torch.Tensor, out_features: int, in_features: int, block_c: int) -> torch.Tensor:
    """``[out, n_col_tiles + 1]``: entry ``(r, c)`` is the position in the sorted ``indices`` of the first
    active index at or after ``(r, c·block_c)``; so row r's entries in column tile c are
    ``indices[p[r, c] : p[r, c + 1]]``. O(out · in / block_c) memory, one binary search per boundary."""
    n_c = triton_cdiv(in_features, block_c)
    bounds = torch.arange(n_c + 1, device=indices.device, dtype=torch.int64) * block_c
    bounds[-1] = in_features
    queries = (
        torch.arange(out_features, device=indices.device, dtype=torch.int64)[:, None] * in_features + bounds
    )
    ptr = torch.searchsorted(
        indices.to(torch.int64) if indices.dtype != torch.int64 else indices, queries.view(-1)
    )
    return ptr.view(out_features, n_c + 1).to(torch.int32 if indices.numel() < 2**31 else torch.int64)


def triton_tiles_grad(
    x2d: torch.Tensor, g2d: torch.Tensor, indices: torch.Tensor, out_features: int, in_features: int
) -> torch.Tensor:
    """``(dYᵀ X).view(-1)[indices]`` in fp32 by the tile kernel; extra memory O(k + out·in / BLOCK_C)."""
    k = indices.numel()
    out = torch.empty(k, dtype=torch.float32, device=x2d.device)
    if k == 0:
        return out
    cfg = KERNEL_CONFIGS["tiles"]
    x2d, g2d = x2d.contiguous(), g2d.contiguous()
    ptr = tile_pointers(indices, out_features, in_features, cfg["BLOCK_C"])
    grid = (triton_cdiv(out_features, cfg["BLOCK_R"]) * triton_cdiv(in_features, cfg["BLOCK_C"]),)
    kernels()["tiles"][grid](
        x2d,
        g2d,
        indices.contiguous(),
        ptr,
        out,
        x2d.shape[0],
        out_features,
        in_features,
        x2d.stride(0),
        g2d.stride(0),
        ptr.stride(0),
        BLOCK_R=cfg["BLOCK_R"],
        BLOCK_C=cfg["BLOCK_C"],
        BLOCK_T=cfg["BLOCK_T"],
        GROUP_R=8,
        UPCAST=interpreted(),
        IEEE=x2d.dtype == torch.float32,
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    return out


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b
