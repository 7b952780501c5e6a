"""The gather-gradient: ``grad_values[j] = sum_b X[b, col_j] * dY[b, row_j]`` for flat indices j.

This is a sampled dense-dense matmul (SDDMM) of ``dYᵀ X`` at the active positions. The ways:

* ``dense``:   the full ``dYᵀ X`` then a gather (what the paper timed; O(out·in) transient memory);
* ``blocked``: the same GEMM by blocks of rows, each gathered before the next (O(block·in) memory);
* ``sddmm``:   ``torch.sparse.sampled_addmm`` on the CSR pattern of the (sorted) indices, accumulated
               over chunks of tokens so the transposed copies stay cache-sized; O(k + chunk) memory;
* ``triton``:  a Triton gather-dot kernel (CUDA; ``triton_sddmm.py``);
* ``triton_rows``: the gather-dot kernel by rows of the weight, each row's ``dYᵀ`` tokens loaded once (CUDA);
* ``triton_tiles``: a Triton tensor-core tile kernel that writes only the active entries (CUDA).

``auto`` measures: the first time it meets a (device, dtype, shape, k, tokens) bucket it times every
candidate on the call's own inputs and keeps the fastest (:func:`calibrated_path`), so on a GPU it is
never slower than ``dense`` by more than timing noise. Small CPU problems, where timing is noise and a
reproducible choice matters more, use the fitted time model of :func:`choose_grad_path` instead. Paths
differ only in fp32 rounding; pin ``grad_path`` for bit-for-bit reproducible runs.
"""

from __future__ import annotations

import statistics
import threading
import time
import warnings
import weakref

import torch

from spiel.delta.indices import csr_pattern

GRAD_PATHS = ("auto", "dense", "blocked", "sddmm", "triton", "triton_rows", "triton_tiles")
CUDA_ONLY_PATHS = ("triton", "triton_rows", "triton_tiles")

# Tokens per sampled_addmm call. The kernel reads a row of Xᵀ (one token chunk) per active index, so
# the chunk of Xᵀ should stay cache-resident: about 1 MiB of fp32, the dev box's L2 per core. Measured (1 thread,
# 512 tokens, 2.47% density, CPU time): 1024x1024 and 2752x1024, 256 tokens 10% and 17% faster than 512;
# 1024x2752, 128 tokens 9% faster than 190. At 4096x4096, 2048 tokens, 128 was best (64 → 0.38×, 128 → 0.30×,
# 256 → 0.37× of dense). So: 2**18 / in_features tokens, within [128, 1024].
SDDMM_CHUNK_FLOATS = 1 << 18
SDDMM_MIN_CHUNK = 128


def sddmm_token_chunk(in_features: int) -> int:
    return max(SDDMM_MIN_CHUNK, min(1024, SDDMM_CHUNK_FLOATS // max(1, in_features)))


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
    """The uncalibrated rule: ``dense`` on CUDA (the safe default until measured); on CPU the cheaper of
    sddmm and dense by the time model above."""
    if device.type == "cuda":
        return "dense"
    density = k / max(1, out_features * in_features)
    if tokens >= CPU_SDDMM_MIN_TOKENS and density < cpu_sddmm_max_density(out_features, in_features):
        return "sddmm"
    return "dense"


def candidate_paths(device: torch.device) -> tuple[str, ...]:
    """The paths ``auto`` measures on ``device``."""
    if device.type == "cuda":
        from spiel.delta.triton_sddmm import triton_available

        return ("dense", "blocked") + (CUDA_ONLY_PATHS if triton_available() else ())
    return ("dense", "blocked", "sddmm")


# Calibrate on CPU only from this many multiply-adds per call (tokens·out·in, 1024x1024 at 256 tokens):
# below it a path takes a millisecond or less, timing is noise and the time model is good enough.
CPU_CALIBRATION_MIN_WORK = 1 << 28
CALIBRATION_REPEATS = 3
CALIBRATION_MARGIN = 1.05  # another path must be 5% faster than the uncalibrated choice to replace it


def _bucket(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def calibration_key(x2d: torch.Tensor, k: int, out_features: int, in_features: int) -> tuple:
    """What a measured choice is kept for: the device, dtype, shape, and k and tokens by powers of two."""
    return (str(x2d.device), x2d.dtype, out_features, in_features, _bucket(k), _bucket(x2d.shape[0]))


_calibrated: dict[tuple, str] = {}
_calibration_lock = threading.Lock()


def calibrated_choices() -> dict[tuple, str]:
    """A copy of every choice ``auto`` has measured in this process (key: :func:`calibration_key`)."""
    with _calibration_lock:
        return dict(_calibrated)


def clear_calibration() -> None:
    with _calibration_lock:
        _calibrated.clear()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def calibrated_path(
    x2d: torch.Tensor,
    g2d: torch.Tensor,
    indices: torch.Tensor,
    out_features: int,
    in_features: int,
    paths: tuple[str, ...] | None = None,
) -> tuple[str, torch.Tensor | None]:
    """``auto``'s choice for this call, and (when it was measured just now) the gradient it computed.

    The first call in a bucket runs each candidate once to warm it up (Triton compiles here), then
    ``CALIBRATION_REPEATS`` more times round-robin, and keeps the path with the smallest median time
    unless the uncalibrated choice (:func:`choose_grad_path`) is within ``CALIBRATION_MARGIN`` of it."""
    key = calibration_key(x2d, indices.numel(), out_features, in_features)
    with _calibration_lock:
        known = _calibrated.get(key)
    if known is not None:
        return known, None
    device = x2d.device
    if device.type != "cuda" and x2d.shape[0] * out_features * in_features < CPU_CALIBRATION_MIN_WORK:
        return choose_grad_path(device, x2d.shape[0], indices.numel(), out_features, in_features), None
    candidates = paths or candidate_paths(device)
    results = {
        path: _run_path(path, x2d, g2d, indices, out_features, in_features) for path in candidates
    }  # warm-up
    times: dict[str, list[float]] = {path: [] for path in candidates}
    for _ in range(CALIBRATION_REPEATS):  # round-robin, so that a burst of load hits every path alike
        for path in candidates:
            forget_shared_x()  # each timed run transposes its input, as a first backward on it does
            _sync(device)
            start = time.perf_counter()
            _run_path(path, x2d, g2d, indices, out_features, in_features)
            _sync(device)
            times[path].append(time.perf_counter() - start)
    timings = {path: statistics.median(ts) for path, ts in times.items()}
    best = min(timings, key=timings.get)
    # The uncalibrated choice (dense on CUDA) stays unless another path is clearly faster: a noise-level
    # difference should not flip it.
    default = choose_grad_path(device, x2d.shape[0], indices.numel(), out_features, in_features)
    if default in timings and timings[default] <= CALIBRATION_MARGIN * timings[best]:
        best = default
    with _calibration_lock:
        _calibrated[key] = best
    return best, results[best]


def dense_gather_grad(x2d: torch.Tensor, g2d: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Full ``dYᵀ X`` then gather: the paper's baseline, and the fastest at high density."""
    return torch.mm(g2d.t(), x2d).view(-1).index_select(0, indices)


# Elements of one row block of ``dYᵀ X`` in the ``blocked`` path (16 MiB in fp32).
BLOCKED_ELEMENTS = 1 << 22


def blocked_gather_grad(
    x2d: torch.Tensor,
    g2d: torch.Tensor,
    indices: torch.Tensor,
    out_features: int,
    in_features: int,
    block_rows: int | None = None,
) -> torch.Tensor:
    """``dense`` by blocks of rows: each ``[rows, in]`` block of ``dYᵀ X`` is one GEMM, gathered at the
    block's (contiguous, since sorted) run of indices before the next. Extra memory O(block · in + out)."""
    rows_per_block = block_rows or max(1, BLOCKED_ELEMENTS // in_features)
    crow, _ = csr_pattern(indices, out_features, in_features)
    starts = list(range(0, out_features, rows_per_block))
    bounds = crow[starts + [out_features]].tolist()  # one device-to-host copy
    out = torch.empty(indices.numel(), dtype=torch.float32, device=x2d.device)
    for b, r0 in enumerate(starts):
        lo, hi = bounds[b], bounds[b + 1]
        if lo == hi:
            continue
        r1 = min(out_features, r0 + rows_per_block)
        block = torch.mm(g2d[:, r0:r1].t(), x2d)
        out[lo:hi] = block.view(-1).index_select(0, indices[lo:hi] - r0 * in_features)
    return out


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
    return sddmm_gather_grads(x2d, g2d, [indices], out_features, in_features, token_chunk)[0]


def sddmm_gather_grads(
    x2d: torch.Tensor,
    g2d: torch.Tensor,
    index_sets: list[torch.Tensor],
    out_features: int,
    in_features: int,
    token_chunk: int | None = None,
) -> list[torch.Tensor]:
    """:func:`sddmm_gather_grad` of several index sets of one ``(X, dY)`` (the values and AG's candidates):
    each token chunk is transposed once for all of them. Each result is what the set alone gives."""
    token_chunk = token_chunk or sddmm_token_chunk(in_features)
    accs = []
    for indices in index_sets:
        crow, cols = csr_pattern(indices, out_features, in_features)
        with warnings.catch_warnings():  # torch's "CSR support is in beta" notice, once per process
            warnings.simplefilter("ignore", UserWarning)
            accs.append(
                torch.sparse_csr_tensor(
                    crow,
                    cols,
                    torch.zeros(indices.numel(), dtype=torch.float32, device=x2d.device),
                    (out_features, in_features),
                    check_invariants=False,
                )
            )
    tokens = x2d.shape[0]
    chunk = max(1, min(token_chunk, tokens))
    buf = _workspace(chunk * (out_features + in_features), x2d.device)
    shared = _shared_x_chunks(x2d, chunk)
    for i, start in enumerate(range(0, tokens, chunk)):
        c = min(chunk, tokens - start)
        # sampled_addmm wants mat1 rows and mat2 columns contiguous: dYᵀ [out, c] and Xᵀ [in, c].
        g_t = buf[: out_features * c].view(out_features, c)
        _transpose_into(g_t, g2d[start : start + c])
        if shared is not None:
            x_t = shared[i]
        else:
            x_t = buf[out_features * c : (out_features + in_features) * c].view(in_features, c)
            _transpose_into(x_t, x2d[start : start + c])
        for acc in accs:
            torch.sparse.sampled_addmm(acc, g_t, x_t.t(), beta=1.0, out=acc)
    return [acc.values() for acc in accs]


# The transposed chunks of the last input X are kept (per thread) when all of Xᵀ is at most this many floats (8 MiB):
# a transformer block's q/k/v projections read one input and so do gate/up, so the backwards of 3 of its 7
# projections find Xᵀ already made (saves ~3.6 ms of 1.3 s per step at the CPU benchmark's shape).
SHARED_XT_FLOATS = 1 << 21


def _shared_x_chunks(x2d: torch.Tensor, chunk: int) -> list[torch.Tensor] | None:
    """The transposed token chunks of ``x2d`` (``[in, c]`` each, fp32): the kept ones when they were made from this
    very tensor (the same object behind the view, unchanged since: its autograd version), else made now and kept.
    None when Xᵀ is too large to keep."""
    tokens, in_features = x2d.shape
    if tokens * in_features > SHARED_XT_FLOATS:
        return None
    owner = x2d._base if x2d._base is not None else x2d
    key = (x2d.data_ptr(), x2d._version, tuple(x2d.shape), x2d.stride(), x2d.dtype, x2d.device, chunk)
    kept = _local.__dict__.get("shared_xt")
    if kept is not None and kept[0]() is owner and kept[1] == key:
        return kept[2]
    buf = _workspace(tokens * in_features, x2d.device, purpose="shared_xt_buffers")
    chunks = []
    for start in range(0, tokens, chunk):
        c = min(chunk, tokens - start)
        x_t = buf[start * in_features : (start + c) * in_features].view(in_features, c)
        _transpose_into(x_t, x2d[start : start + c])
        chunks.append(x_t)
    _local.shared_xt = (weakref.ref(owner), key, chunks)
    return chunks


def forget_shared_x() -> None:
    """Drop the kept Xᵀ (the next backward transposes its input afresh)."""
    _local.__dict__.pop("shared_xt", None)


def _transpose_into(dst: torch.Tensor, src: torch.Tensor) -> None:
    """``dst[:] = src.t()`` for ``src`` [T, n] and contiguous ``dst`` [n, T].

    One ``copy_`` of the whole chunk: for a contiguous fp32 ``src`` torch takes its blocked-transpose copy
    (512x1024 fp32, 1 thread: 0.19 ms, against 0.92 ms for the strips of 128 tokens this once copied)."""
    dst.copy_(src.t())


_local = threading.local()


def _workspace(numel: int, device: torch.device, purpose: str = "buffers") -> torch.Tensor:
    """A reused fp32 buffer of at least ``numel`` for the transposed chunks, one per thread, device and
    ``purpose`` (the kept Xᵀ has its own, so that the per-call chunks never overwrite it).

    Allocating the chunks afresh in every backward costs more than copying into them: buffers of a few
    MiB are mmap-ed by the allocator and page-faulted on first touch each time (measured: the transposed
    copy of a 512x2752 dY took 4 ms fresh and 1.4 ms into warm memory). Kept: at most one chunk of
    Xᵀ and dYᵀ for the largest layer (~8 MiB at LLaMA-2-7B shapes)."""
    cache = _local.__dict__.setdefault(purpose, {})
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
        grad_path, result = calibrated_path(x2d, g2d, indices, out_features, in_features)
        if result is not None:
            return result
    return _run_path(grad_path, x2d, g2d, indices, out_features, in_features)


def gather_grads(
    x2d: torch.Tensor,
    g2d: torch.Tensor,
    index_sets: list[torch.Tensor],
    out_features: int,
    in_features: int,
    grad_path: str = "auto",
    dense_grad: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """:func:`gather_grad` of several index sets of one backward; the sets that take the ``sddmm`` path share its
    transposed token chunks (:func:`sddmm_gather_grads`)."""
    if dense_grad is not None or grad_path not in ("auto", "sddmm") or len(index_sets) < 2:
        return [
            gather_grad(x2d, g2d, s, out_features, in_features, grad_path, dense_grad) for s in index_sets
        ]
    results: list[torch.Tensor | None] = [None] * len(index_sets)
    shared = []
    for i, indices in enumerate(index_sets):
        path = grad_path
        if indices.numel() and path == "auto":
            path, results[i] = calibrated_path(x2d, g2d, indices, out_features, in_features)
        if results[i] is None and indices.numel() and path == "sddmm":
            shared.append(i)
        elif results[i] is None:
            results[i] = gather_grad(x2d, g2d, indices, out_features, in_features, path)
    found = (
        sddmm_gather_grads(x2d, g2d, [index_sets[i] for i in shared], out_features, in_features)
        if shared
        else []
    )
    for i, grad in zip(shared, found, strict=True):
        results[i] = grad
    return results


def _run_path(grad_path, x2d, g2d, indices, out_features, in_features) -> torch.Tensor:
    if grad_path in CUDA_ONLY_PATHS and x2d.device.type != "cuda" and not _interpreted():
        raise ValueError(
            f"grad_path={grad_path!r} needs a CUDA device (or TRITON_INTERPRET=1 for tests); "
            f"the inputs are on {x2d.device}: use auto, dense, blocked or sddmm"
        )
    if grad_path == "dense":
        return dense_gather_grad(x2d, g2d, indices)
    if grad_path == "blocked":
        return blocked_gather_grad(x2d, g2d, indices, out_features, in_features)
    if grad_path == "sddmm":
        return sddmm_gather_grad(x2d, g2d, indices, out_features, in_features)
    if grad_path == "triton":
        from spiel.delta.triton_sddmm import triton_gather_grad

        return triton_gather_grad(x2d, g2d, indices, in_features)
    if grad_path == "triton_rows":
        from spiel.delta.triton_sddmm import triton_rows_grad

        return triton_rows_grad(x2d, g2d, indices, out_features, in_features)
    if grad_path == "triton_tiles":
        from spiel.delta.triton_sddmm import triton_tiles_grad

        return triton_tiles_grad(x2d, g2d, indices, out_features, in_features)
    raise ValueError(f"grad_path must be one of {GRAD_PATHS}, got {grad_path!r}")


def _interpreted() -> bool:
    from spiel.delta.triton_sddmm import interpreted

    return interpreted()
