"""The gather-gradient: ``grad_values[j] = sum_b X[b, col_j] * dY[b, row_j]`` for flat indices j.

This is a sampled dense-dense matmul (SDDMM) of ``dYᵀ X`` at the active positions. Three ways:

* ``dense``:  the full ``dYᵀ X`` then a gather (what the paper timed; O(out·in) transient memory);
* ``sddmm``:  ``torch.sparse.sampled_addmm`` on the CSR pattern of the (sorted) indices, accumulated
              over chunks of tokens so the transposed copies stay cache-sized; O(k + chunk) memory;
* ``triton``: a Triton gather-dot kernel for CUDA (``triton_sddmm.py``).

``auto`` picks one; see :func:`choose_grad_path` for the rule and where its numbers come from.
"""

from __future__ import annotations

import threading
import warnings

import torch

from .indices import csr_pattern

GRAD_PATHS = ("auto", "dense", "sddmm", "triton")

# Tokens per sampled_addmm call. The kernel reads a row of Xᵀ (one token chunk) per active index, so
# the chunk of Xᵀ should stay cache-resident: about 2 MiB of fp32 (the dev box has 2 MiB L2 per core).
# Measured at 4096x4096, 2048 tokens: 64 → 0.38×, 128 → 0.30×, 256 → 0.37× of dense; at 1024x1024,
# 512 tokens 512 was best. So: 2**19 / in_features tokens, within [32, 1024].
SDDMM_CHUNK_FLOATS = 1 << 19


def sddmm_token_chunk(in_features: int) -> int:
    return max(32, min(1024, SDDMM_CHUNK_FLOATS // max(1, in_features)))

# CPU choice between sddmm and dense, from a time model per token fitted with
# `scripts/bench_kernel.py --crossover` on the 2-core dev box (fp32):
#     dense ≈ out·in / R_gemm          sddmm ≈ k / R_gather + (in + out) / R_copy
# (R_copy covers the transposed chunk copies and per-call overhead). So sddmm wins when
#     density < (R_gather / R_gemm) · (1 − (R_gemm / R_copy) · (in + out) / (out·in)).
# Measured: R_gemm ≈ 115e9, R_gather ≈ 9–12e9, R_copy ≈ 0.8e9 multiply-adds/s, giving a crossover near
# 7% density at 4096x4096 and near 5% at 1024x1024 (LoRA rank 64 is 3.1% and 12.5% there).
CPU_GATHER_TO_GEMM = 0.08
CPU_GEMM_TO_COPY = 140.0
# Below this many tokens the per-call overhead dominates and one dense GEMM is cheaper.
CPU_SDDMM_MIN_TOKENS = 16


def cpu_sddmm_max_density(out_features: int, in_features: int) -> float:
    """Density below which ``sddmm`` beats ``dense`` on CPU, by the time model above."""
    overhead = CPU_GEMM_TO_COPY * (in_features + out_features) / (in_features * out_features)
    return CPU_GATHER_TO_GEMM * max(0.0, 1.0 - overhead)


def validate_grad_path(grad_path: str) -> str:
    if grad_path not in GRAD_PATHS:
        raise ValueError(f"grad_path must be one of {GRAD_PATHS}, got {grad_path!r}")
    return grad_path


def choose_grad_path(device: torch.device, tokens: int, k: int, out_features: int, in_features: int) -> str:
    """The ``auto`` rule: Triton on CUDA (dense if triton is missing); on CPU the cheaper of sddmm and
    dense by the time model above."""
    if device.type == "cuda":
        from .triton_sddmm import triton_available

        return "triton" if triton_available() else "dense"
    density = k / max(1, out_features * in_features)
    if tokens >= CPU_SDDMM_MIN_TOKENS and density < cpu_sddmm_max_density(out_features, in_features):
        return "sddmm"
    return "dense"


def dense_gather_grad(x2d: torch.Tensor, g2d: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Full ``dYᵀ X`` then gather: the paper's baseline, and the fastest at high density."""
    return torch.mm(g2d.t(), x2d).view(-1).index_select(0, indices)


def sddmm_gather_grad(
    x2d: torch.Tensor,
    g2d: torch.Tensor,
    indices: torch.Tensor,
    out_features: int,
    in_features: int,
    token_chunk: int | None = None,
) -> torch.Tensor:
    """Only the k needed dot products, in fp32, via sampled_addmm over token chunks.

    Extra memory: the CSR pattern and result (O(k)) plus one transposed chunk of X and dY
    (O(token_chunk · (in + out))); nothing of size out·in.
    """
    k = indices.numel()
    token_chunk = token_chunk or sddmm_token_chunk(in_features)
    crow, cols = csr_pattern(indices, out_features, in_features)
    with warnings.catch_warnings():  # torch's "CSR support is in beta" notice, once per process
        warnings.simplefilter("ignore", UserWarning)
        acc = torch.sparse_csr_tensor(
            crow,
            cols,
            torch.zeros(k, dtype=torch.float32, device=x2d.device),
            (out_features, in_features),
            check_invariants=False,
        )
    tokens = x2d.shape[0]
    chunk = max(1, min(token_chunk, tokens))
    buf = _workspace(chunk * (out_features + in_features), x2d.device)
    for start in range(0, tokens, chunk):
        c = min(chunk, tokens - start)
        # sampled_addmm wants mat1 rows and mat2 columns contiguous: dYᵀ [out, c] and Xᵀ [in, c].
        g_t = buf[: out_features * c].view(out_features, c)
        x_t = buf[out_features * c : (out_features + in_features) * c].view(in_features, c)
        _transpose_into(g_t, g2d[start : start + c])
        _transpose_into(x_t, x2d[start : start + c])
        torch.sparse.sampled_addmm(acc, g_t, x_t.t(), beta=1.0, out=acc)
    return acc.values()


# Tokens per strip of a transposed copy. torch copies a transposed [T, n] matrix by walking the
# destination, i.e. reading the source with a stride of n floats, which thrashes the TLB; copying
# 128-token strips one at a time measured 3x faster (512x2752 fp32: 0.84 ms against 2.5 ms).
TRANSPOSE_STRIP = 128


def _transpose_into(dst: torch.Tensor, src: torch.Tensor) -> None:
    """``dst[:] = src.t()`` for ``src`` [T, n] and contiguous ``dst`` [n, T], by strips of tokens."""
    for s in range(0, src.shape[0], TRANSPOSE_STRIP):
        dst[:, s : s + TRANSPOSE_STRIP].copy_(src[s : s + TRANSPOSE_STRIP].t())


_local = threading.local()


def _workspace(numel: int, device: torch.device) -> torch.Tensor:
    """A reused fp32 buffer of at least ``numel`` for the transposed chunks, one per thread and device.

    Allocating the chunks afresh in every backward costs more than copying into them: buffers of a few
    MiB are mmap-ed by the allocator and page-faulted on first touch each time (measured: the transposed
    copy of a 512x2752 dY took 4 ms fresh and 1.4 ms into warm memory). Kept: at most one chunk of
    Xᵀ and dYᵀ for the largest layer (~8 MiB at LLaMA-2-7B shapes)."""
    cache = _local.__dict__.setdefault("buffers", {})
    buf = cache.get(device)
    if buf is None or buf.numel() < numel:
        buf = cache[device] = torch.empty(numel, dtype=torch.float32, device=device)
    return buf


def gather_grad(
    x2d: torch.Tensor,
    g2d: torch.Tensor,
    indices: torch.Tensor,
    out_features: int,
    in_features: int,
    grad_path: str = "auto",
    dense_grad: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(dYᵀ X).view(-1)[indices]`` by the chosen path, as fp32 for the sparse paths.

    ``dense_grad``: an already computed ``dYᵀ X`` (a growth probe asked for it); then a gather is free.
    """
    if indices.numel() == 0:
        return torch.zeros(0, dtype=torch.float32, device=x2d.device)
    if dense_grad is not None:
        return dense_grad.view(-1).index_select(0, indices)
    if grad_path == "auto":
        grad_path = choose_grad_path(x2d.device, x2d.shape[0], indices.numel(), out_features, in_features)
    if grad_path == "dense":
        return dense_gather_grad(x2d, g2d, indices)
    if grad_path == "sddmm":
        return sddmm_gather_grad(x2d, g2d, indices, out_features, in_features)
    if grad_path == "triton":
        from .triton_sddmm import triton_gather_grad

        return triton_gather_grad(x2d, g2d, indices, in_features)
    raise ValueError(f"grad_path must be one of {GRAD_PATHS}, got {grad_path!r}")
