"""GROW: which inactive positions become active.

* SpIEL-AG ranks growth candidates by their mean accumulated step gradient ``|ĝ|``.
* SpIEL-MA ranks every inactive position by the SM3 score ``row_acc[r] · col_acc[c]`` (the paper's
  ``|m̂| = (r·c)^¼`` has the same order), computed in row chunks with a running top-n, so no
  ``[out, in]`` score matrix ever exists. AG's candidates (top ``|g|`` of the phase's first dense
  gradient) are found the same way, so no copy of that gradient is made.
"""

from __future__ import annotations

import math

import torch

from spiel.delta.indices import csr_pattern, isin_sorted
from spiel.selection.order import order_by

CHUNK_ELEMENTS = 1 << 20  # score entries materialized at once (4 MiB of fp32) ...
CHUNK_PER_N = (
    8  # ... or 8·n when that is more, so a large n (a first reselection replaces all k) merges rarely
)
# On a GPU every chunk costs a few host syncs and kernel launches, which cost more than its arithmetic: 2**20
# made ~40 chunks of a 7B MLP weight (11008x4096) per reselection. 2**24 (64 MiB of fp32) makes 3.
CHUNK_ELEMENTS_CUDA = 1 << 24


def rows_per_chunk(chunk_elements: int, in_features: int) -> int:
    """How many whole rows of ``in_features`` fit ``chunk_elements`` scores (at least one)."""
    return max(1, chunk_elements // in_features)


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
    return torch.topk(sample, threshold_rank(n, total), sorted=False).values.min()


def threshold_rank(n: int, total: int) -> int:
    """Which of the ``SAMPLE_SIZE`` sampled scores (by rank) makes the threshold for the top ``n`` of ``total``:
    about ``1.25·n + 4σ`` of them, so that the threshold almost always lets at least ``n`` through."""
    expected = SAMPLE_SIZE * n / total  # sample entries above the true n-th largest, on average
    return min(SAMPLE_SIZE, int(1.25 * expected + 4 * expected**0.5 + 16))


# Gathers here use ``index_select``: on CPU several times faster than ``tensor[index]`` (29,004 of 1 Mi fp32:
# 0.03 against 0.2 ms), the same values.


def _best_first(index: torch.Tensor, scores: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``n`` best of position-ascending ``(index, scores)``, by score descending, ties position ascending."""
    keep = order_by(scores, descending=True)[:n]
    return index.index_select(0, keep), scores.index_select(0, keep)


def _top_by_row_chunks(
    n: int,
    out_features: int,
    in_features: int,
    chunk_scores,
    chunk_elements: int,
    device: torch.device,
    score_at=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(flat positions, scores)`` of the ``n`` largest scores of an ``[out, in]`` matrix, best first (ties:
    lower position first), with only one chunk of rows scored at a time: ``chunk_scores(r0, r1)`` returns
    rows ``r0:r1`` as a flat fp32 tensor (which may be modified); ``score_at(flat positions)`` the scores at
    given positions (for the sampled threshold). Extra memory O(n + chunk_elements).

    With ``score_at``, chunks keep only the scores at or above a sampled threshold and one sort finishes;
    should fewer than ``n`` pass (a sample far off), or without it, a running top-n is merged chunk by chunk.
    Both give exactly the ``n`` best."""
    chunk_rows = rows_per_chunk(chunk_elements, in_features)
    chunks = [(r0, min(out_features, r0 + chunk_rows)) for r0 in range(0, out_features, chunk_rows)]
    threshold = (
        None if score_at is None else _sample_threshold(score_at, out_features * in_features, n, device)
    )
    if threshold is not None:
        kept_index, kept_scores = [], []
        for r0, r1 in chunks:
            scores = chunk_scores(r0, r1)
            positions = (scores >= threshold).nonzero().view(-1)
            kept_index.append(positions + r0 * in_features)
            kept_scores.append(scores.index_select(0, positions))
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
        best_index, best_scores = _best_first(
            torch.cat([best_index, positions + r0 * in_features]),
            torch.cat([best_scores, scores.index_select(0, positions)]),
            n,
        )
    return best_index, best_scores


def top_candidates(
    dense_grad: torch.Tensor,
    num: int,
    chunk_elements: int | None = None,
    *,
    row_factor: torch.Tensor | None = None,
    col_factor: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sorted flat positions of the ``num`` largest ``|dense_grad|`` entries (int64), or with ``row_factor`` /
    ``col_factor`` of the largest normalized scores ``|g[r, c]| · row_factor[r] · col_factor[c]`` (see
    :func:`normalization_factors`).

    By row chunks: a whole-matrix ``topk`` of ``|g|`` needs an fp32 copy and topk's own out·in work
    buffers on top of the gradient (at LLaMA-2-7B's 11008x4096, ~0.5 GiB at every phase start)."""
    out_features, in_features = dense_grad.shape
    num = min(num, dense_grad.numel())
    if num <= 0:
        return torch.zeros(0, dtype=torch.long, device=dense_grad.device)
    flat = dense_grad.reshape(-1)
    normalized = row_factor is not None

    def chunk_scores(r0, r1):
        scores = dense_grad[r0:r1].abs().float()
        if normalized:
            scores = scores * row_factor[r0:r1, None] * col_factor[None, :]
        return scores.reshape(-1)

    def score_at(positions):
        scores = flat.index_select(0, positions).abs().float()
        if normalized:
            rows = torch.div(positions, in_features, rounding_mode="floor")
            scores = scores * row_factor[rows] * col_factor[positions - rows * in_features]
        return scores

    index, _ = _top_by_row_chunks(
        num,
        out_features,
        in_features,
        chunk_scores,
        chunk_elements or _default_chunk(num, dense_grad.device),
        dense_grad.device,
        score_at=score_at,
    )
    return index.sort().values


def streamed_top_candidates(
    block_grad, out_features: int, in_features: int, num: int, rows_per_block: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`top_candidates` of a gradient that is never whole: ``block_grad(r0, r1)`` gives its rows ``r0:r1``
    (called once per block, in order). Returns the sorted positions and the gradient there (fp32).

    Each block keeps only entries that can still be among the ``num`` best: at least its own ``num``-th largest
    ``|g|`` (a torch.topk of the block) and, once ``num`` are held, better than the weakest held (equal loses:
    it has the higher position); the held set and the kept entries are merged by one integer sort. Extra
    memory O(num + block)."""
    num = min(num, out_features * in_features)
    best_index = best_scores = best_grad = None
    for r0 in range(0, out_features, rows_per_block):
        r1 = min(out_features, r0 + rows_per_block)
        grad = block_grad(r0, r1).reshape(-1)
        scores = grad.abs().float()
        keep = torch.ones_like(scores, dtype=torch.bool)
        if scores.numel() > num:
            keep = scores >= torch.topk(scores, num, sorted=False).values.min()
        if best_index is not None and best_index.numel() == num:
            keep &= scores > best_scores[-1]
        positions = keep.nonzero().view(-1)
        index = positions + r0 * in_features
        if best_index is not None:
            index = torch.cat([best_index, index])
            grad_kept, scores = (
                torch.cat([best_grad, grad[positions].float()]),
                torch.cat([best_scores, scores.index_select(0, positions)]),
            )
        else:
            grad_kept, scores = grad[positions].float(), scores[positions]
        best = order_by(scores, descending=True)[:num]  # equal scores: the lower position (earlier) first
        best_index, best_scores, best_grad = index[best], scores[best], grad_kept[best]
    order = best_index.sort().indices
    return best_index[order], best_grad[order]


def ag_grow_order(
    candidates: torch.Tensor, scores: torch.Tensor, staying: torch.Tensor, n: int
) -> torch.Tensor:
    """Positions (into ``candidates``) of the ``n`` highest-``scores`` candidates not in ``staying`` (sorted), best
    first. The growth rule scores (the paper's: ``|mean gradient|``, see ``rules.accumulated_gradient``)."""
    eligible = (~isin_sorted(candidates, staying)).nonzero().view(-1)
    if eligible.numel() == 0 or n <= 0:
        return eligible[:0]
    order = order_by(scores[eligible], descending=True)
    return eligible[order[:n]]


def ma_grow_indices(
    row_acc: torch.Tensor,
    col_acc: torch.Tensor,
    active: torch.Tensor,
    n: int,
    chunk_elements: int | None = None,
) -> torch.Tensor:
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

    index, scores = _top_by_row_chunks(
        n,
        out_features,
        in_features,
        chunk_scores,
        chunk_elements or _default_chunk(n, row_acc.device),
        row_acc.device,
        score_at=score_at,
    )
    return index[scores > -torch.inf]


# -- the growth variants that keep the support spread (options of SpIEL-AG) -------------------------------------
def normalization_factors(dense_grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(row_factor [out], col_factor [in])`` with ``|g[r, c]| · row_factor[r] · col_factor[c]`` the normalized
    score ``|g[r, c]| · rms(g) / (rms(g[r, :]) · rms(g[:, c]))``.

    For a gradient whose rows and columns are scaled, ``g[r, c] = a_r · b_c · x[r, c]``, the score is about
    ``|x[r, c]|``: a row whose gradient is 10x larger no longer takes every top spot. A row or column with an
    all-zero gradient scores 0. Computed in fp32 row chunks (no ``[out, in]`` fp32 copy)."""
    out_features, in_features = dense_grad.shape
    row_sq = torch.zeros(out_features, dtype=torch.float32, device=dense_grad.device)
    col_sq = torch.zeros(in_features, dtype=torch.float32, device=dense_grad.device)
    chunk_rows = rows_per_chunk(CHUNK_ELEMENTS, in_features)
    for r0 in range(0, out_features, chunk_rows):
        chunk = dense_grad[r0 : r0 + chunk_rows].float().square()  # a copy: .float() of fp32 is no copy
        row_sq[r0 : r0 + chunk_rows] = chunk.sum(1)
        col_sq += chunk.sum(0)
    total_rms = (row_sq.sum() / dense_grad.numel()).sqrt()
    row_rms, col_rms = (row_sq / in_features).sqrt_(), (col_sq / out_features).sqrt_()
    row_factor = torch.where(row_rms > 0, total_rms / row_rms, torch.zeros_like(row_rms))
    col_factor = torch.where(col_rms > 0, 1 / col_rms, torch.zeros_like(col_rms))
    return row_factor, col_factor


def line_caps(k: int, out_features: int, in_features: int, cap: float) -> tuple[int, int]:
    """The most entries a row / a column may hold: ``cap`` times its mean share of ``k``, rounded up."""
    return math.ceil(cap * k / out_features), math.ceil(cap * k / in_features)


def admit_under_caps(
    positions: torch.Tensor,
    in_features: int,
    row_counts: torch.Tensor,
    col_counts: torch.Tensor,
    row_cap: int,
    col_cap: int,
) -> torch.Tensor:
    """Which of ``positions`` (best first) to take so that no row holds more than ``row_cap`` entries and no
    column more than ``col_cap``, counting ``row_counts`` / ``col_counts`` already there: first each row takes
    its best positions up to its room, then each column takes its best of those up to its room."""
    rows = torch.div(positions, in_features, rounding_mode="floor")
    admitted = _rank_within(rows) < (row_cap - row_counts[rows])
    cols = positions - rows * in_features
    keep = admitted.nonzero().view(-1)
    admitted[keep] = _rank_within(cols[keep]) < (col_cap - col_counts[cols[keep]])
    return admitted


def _rank_within(groups: torch.Tensor) -> torch.Tensor:
    """For each element, how many earlier elements are in the same group."""
    if groups.numel() == 0:
        return groups.clone()
    order = torch.sort(groups, stable=True).indices
    sorted_groups = groups[order]
    first = torch.ones_like(sorted_groups, dtype=torch.bool)
    first[1:] = sorted_groups[1:] != sorted_groups[:-1]
    start = torch.cummax(torch.where(first, torch.arange(groups.numel(), device=groups.device), 0), 0).values
    rank = torch.empty(groups.shape, dtype=torch.long, device=groups.device)
    rank[order] = torch.arange(groups.numel(), device=groups.device) - start
    return rank


def capped_top_candidates(dense_grad: torch.Tensor, num: int, row_cap: int, col_cap: int) -> torch.Tensor:
    """Sorted flat positions of the ``num`` largest ``|dense_grad|`` taken under per-row and per-column caps
    (:func:`admit_under_caps`), topped up with the best of the rest should the caps leave fewer than ``num``.
    Memory O(out · row_cap): each row offers only its ``row_cap`` best entries."""
    out_features, in_features = dense_grad.shape
    num = min(num, dense_grad.numel())
    per_row = min(row_cap, in_features)
    chunk_rows = rows_per_chunk(CHUNK_ELEMENTS, in_features)
    positions, scores = [], []
    for r0 in range(0, out_features, chunk_rows):
        top = dense_grad[r0 : r0 + chunk_rows].abs().float().topk(per_row, dim=1)
        row_ids = torch.arange(r0, r0 + top.indices.shape[0], device=dense_grad.device)
        positions.append((row_ids[:, None] * in_features + top.indices).view(-1))
        scores.append(top.values.view(-1))
    positions, scores = torch.cat(positions), torch.cat(scores)
    best_first = positions[order_by(scores, descending=True)]
    zeros_out = torch.zeros(out_features, dtype=torch.long, device=dense_grad.device)
    zeros_in = torch.zeros(in_features, dtype=torch.long, device=dense_grad.device)
    admitted = admit_under_caps(best_first, in_features, zeros_out, zeros_in, row_cap, col_cap)
    chosen = best_first[admitted][:num]
    if chosen.numel() < num:  # caps too tight for num entries among the offered ones: the best of the rest
        chosen = torch.cat([chosen, best_first[~admitted][: num - chosen.numel()]])
    if chosen.numel() < num:  # rows offered fewer than num entries in all (row_cap · out < num)
        rest = ~isin_sorted(torch.arange(dense_grad.numel(), device=dense_grad.device), chosen.sort().values)
        rest = rest.nonzero().view(-1)
        rest_scores = dense_grad.reshape(-1)[rest].abs().float()
        chosen = torch.cat([chosen, rest[order_by(rest_scores, descending=True)][: num - chosen.numel()]])
    return chosen.sort().values


def random_inactive(excluded: torch.Tensor, numel: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` distinct positions in ``[0, numel)`` outside the sorted ``excluded``, uniformly at random (all of
    them, in random order, when fewer than ``n`` remain)."""
    device = excluded.device
    free = numel - excluded.numel()
    n = min(n, free)
    if n <= 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    if free <= 4 * n:  # dense enough to list the free positions
        mask = torch.ones(numel, dtype=torch.bool, device=device)
        mask[excluded.long()] = False
        pool = mask.nonzero().view(-1)
        return pool[torch.randperm(pool.numel(), generator=generator, device=device)[:n]]
    chosen = torch.zeros(0, dtype=torch.long, device=device)
    while chosen.numel() < n:  # rejection: each draw is free with probability > 3/4
        draw = torch.randint(numel, (2 * (n - chosen.numel()) + 16,), generator=generator, device=device)
        draw = draw[~isin_sorted(draw, excluded.long())]
        # keep first occurrences, in draw order, of positions not chosen before
        unique, inverse = torch.unique(draw, return_inverse=True)
        first = torch.full((unique.numel(),), draw.numel(), dtype=torch.long, device=device)
        first.scatter_reduce_(0, inverse, torch.arange(draw.numel(), device=device), "amin")
        fresh = draw[first.sort().values]
        fresh = fresh[~isin_sorted(fresh, chosen.sort().values)]
        chosen = torch.cat([chosen, fresh[: n - chosen.numel()]])
    return chosen
