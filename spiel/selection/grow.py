"""GROW: which inactive positions become active.

* SpIEL-AG ranks growth candidates by their mean accumulated step gradient ``|ĝ|``.
* SpIEL-MA ranks every inactive position by the SM3 score ``row_acc[r] · col_acc[c]`` (the paper's
  ``|m̂| = (r·c)^¼`` has the same order), computed in row chunks with a running top-n, so no
  ``[out, in]`` score matrix ever exists. AG's candidates (top ``|g|`` of the phase's first dense
  gradient) are found the same way, so no copy of that gradient is made.
"""

from __future__ import annotations

import torch

from ..delta.indices import csr_pattern, isin_sorted
from .order import order_by

CHUNK_ELEMENTS = 1 << 20  # score entries materialized at once (4 MiB of fp32) ...
CHUNK_PER_N = 8  # ... or 8·n when that is more, so a large n (a first reselection replaces all k) merges rarely
# On a GPU every chunk costs a few host syncs and kernel launches, which cost more than its arithmetic: 2**20
# made ~40 chunks of a 7B MLP weight (11008x4096) per reselection. 2**24 (64 MiB of fp32) makes 3.
CHUNK_ELEMENTS_CUDA = 1 << 24


def _default_chunk(n: int, device: torch.device) -> int:
    return max(CHUNK_ELEMENTS_CUDA if device.type == "cuda" else CHUNK_ELEMENTS, CHUNK_PER_N * n)


# Top-n by threshold: the n largest of N scores are found by estimating the n-th largest from a fixed
# random sample of positions, keeping the scores at or above it (one comparison pass per chunk) and sorting
# only those, once. torch.topk over all N, or a running top-n merged chunk by chunk, cost more than the
# GEMM that made the scores (1024x1024, n = 32768, 1 thread: topk 12.7 ms, the GEMM 12.1 ms).
SAMPLE_SIZE = 1 << 16
SAMPLE_SEED = 0x5EED  # a fixed sample, so that the choice is reproducible


def _sample_threshold(score_at, total: int, n: int, device: torch.device) -> torch.Tensor | None:
    """A score that about ``1.25·n + 4σ`` of the ``total`` scores reach (None when sampling cannot help)."""
    if 4 * n >= total or total <= SAMPLE_SIZE:
        return None
    gen = torch.Generator(device=device).manual_seed(SAMPLE_SEED)
    sample = score_at(torch.randint(total, (SAMPLE_SIZE,), generator=gen, device=device))
    expected = SAMPLE_SIZE * n / total  # sample entries above the true n-th largest, on average
    rank = min(SAMPLE_SIZE, int(1.25 * expected + 4 * expected**0.5 + 16))
    return torch.topk(sample, rank, sorted=False).values.min()


def _best_first(index: torch.Tensor, scores: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``n`` best of position-ascending ``(index, scores)``, by score descending, ties position ascending."""
    keep = order_by(scores, descending=True)[:n]
    return index[keep], scores[keep]


def _top_by_row_chunks(n: int, out_features: int, in_features: int, chunk_scores, chunk_elements: int,
                       device: torch.device, score_at=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(flat positions, scores)`` of the ``n`` largest scores of an ``[out, in]`` matrix, best first (ties:
    lower position first), with only one chunk of rows scored at a time: ``chunk_scores(r0, r1)`` returns
    rows ``r0:r1`` as a flat fp32 tensor (which may be modified); ``score_at(flat positions)`` the scores at
    given positions (for the sampled threshold). Extra memory O(n + chunk_elements).

    With ``score_at``, chunks keep only the scores at or above a sampled threshold and one sort finishes;
    should fewer than ``n`` pass (a sample far off), or without it, a running top-n is merged chunk by chunk.
    Both give exactly the ``n`` best."""
    rows_per_chunk = max(1, chunk_elements // in_features)
    chunks = [(r0, min(out_features, r0 + rows_per_chunk)) for r0 in range(0, out_features, rows_per_chunk)]
    threshold = None if score_at is None else _sample_threshold(score_at, out_features * in_features, n, device)
    if threshold is not None:
        kept_index, kept_scores = [], []
        for r0, r1 in chunks:
            scores = chunk_scores(r0, r1)
            positions = (scores >= threshold).nonzero().view(-1)
            kept_index.append(positions + r0 * in_features)
            kept_scores.append(scores[positions])
        index, scores = torch.cat(kept_index), torch.cat(kept_scores)
        if index.numel() >= n:
            return _best_first(index, scores, n)
    best_scores = torch.empty(0, dtype=torch.float32, device=device)
    best_index = torch.empty(0, dtype=torch.long, device=device)
    for r0, r1 in chunks:
        scores = chunk_scores(r0, r1)
        if best_scores.numel() == n:
            # Later chunks hold higher positions, so a score equal to the smallest kept one loses the tie.
            positions = (scores > best_scores[-1]).nonzero().view(-1)
        else:
            positions = torch.arange(scores.numel(), device=device)
        if positions.numel() == 0:
            continue
        # Stable: among equal scores the earlier (lower position) entry stays first.
        best_index, best_scores = _best_first(torch.cat([best_index, positions + r0 * in_features]),
                                              torch.cat([best_scores, scores[positions]]), n)
    return best_index, best_scores


def top_candidates(dense_grad: torch.Tensor, num: int, chunk_elements: int | None = None) -> torch.Tensor:
    """Sorted flat positions of the ``num`` largest ``|dense_grad|`` entries (int64).

    By row chunks: a whole-matrix ``topk`` of ``|g|`` needs an fp32 copy and topk's own out·in work
    buffers on top of the gradient (at LLaMA-2-7B's 11008x4096, ~0.5 GiB at every phase start)."""
    out_features, in_features = dense_grad.shape
    num = min(num, dense_grad.numel())
    if num <= 0:
        return torch.zeros(0, dtype=torch.long, device=dense_grad.device)
    flat = dense_grad.reshape(-1)
    index, _ = _top_by_row_chunks(num, out_features, in_features,
                                  lambda r0, r1: dense_grad[r0:r1].reshape(-1).abs().float(),
                                  chunk_elements or _default_chunk(num, dense_grad.device), dense_grad.device,
                                  score_at=lambda positions: flat[positions].abs().float())
    return index.sort().values


def ag_grow_order(candidates: torch.Tensor, mean_grad: torch.Tensor, staying: torch.Tensor, n: int) -> torch.Tensor:
    """Positions (into ``candidates``) of the ``n`` best candidates not in ``staying`` (sorted), best first."""
    eligible = (~isin_sorted(candidates, staying)).nonzero().view(-1)
    if eligible.numel() == 0 or n <= 0:
        return eligible[:0]
    order = order_by(mean_grad[eligible].abs(), descending=True)
    return eligible[order[:n]]


def ma_grow_indices(row_acc: torch.Tensor, col_acc: torch.Tensor, active: torch.Tensor, n: int,
                    chunk_elements: int | None = None) -> torch.Tensor:
    """Flat positions of the ``n`` largest ``row_acc[r]·col_acc[c]`` over positions not in ``active``
    (sorted unique), best first. Extra memory O(n + chunk_elements); default chunk: max(2**20, 8·n), on CUDA
    max(2**24, 8·n)."""
    out_features, in_features = row_acc.numel(), col_acc.numel()
    if n <= 0:
        return torch.zeros(0, dtype=torch.long, device=row_acc.device)
    crow = csr_pattern(active, out_features, in_features)[0].tolist()  # one host sync, not two per chunk

    def chunk_scores(r0: int, r1: int) -> torch.Tensor:
        scores = (row_acc[r0:r1, None].float() * col_acc[None, :].float()).view(-1)
        scores[active[crow[r0] : crow[r1]].long() - r0 * in_features] = -torch.inf
        return scores

    def score_at(positions: torch.Tensor) -> torch.Tensor:
        rows = torch.div(positions, in_features, rounding_mode="floor")
        scores = row_acc[rows].float() * col_acc[positions - rows * in_features].float()
        return scores.masked_fill_(isin_sorted(positions, active.long()), -torch.inf)

    index, scores = _top_by_row_chunks(n, out_features, in_features, chunk_scores,
                                       chunk_elements or _default_chunk(n, row_acc.device), row_acc.device,
                                       score_at=score_at)
    return index[scores > -torch.inf]
