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

CHUNK_ELEMENTS = 1 << 20  # score entries materialized at once (4 MiB of fp32) ...
CHUNK_PER_N = 8  # ... or 8·n when that is more, so a large n (a first reselection replaces all k) merges rarely


def _default_chunk(n: int) -> int:
    return max(CHUNK_ELEMENTS, CHUNK_PER_N * n)


def _top_by_row_chunks(n: int, out_features: int, in_features: int, chunk_scores, chunk_elements: int,
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(flat positions, scores)`` of the ``n`` largest scores of an ``[out, in]`` matrix, best first, with
    only one chunk of rows scored at a time: ``chunk_scores(r0, r1)`` returns rows ``r0:r1`` as a flat fp32
    tensor (which may be modified). A running top-n keeps the extra memory O(n + chunk_elements)."""
    rows_per_chunk = max(1, chunk_elements // in_features)
    best_scores = torch.empty(0, dtype=torch.float32, device=device)
    best_index = torch.empty(0, dtype=torch.long, device=device)
    for r0 in range(0, out_features, rows_per_chunk):
        r1 = min(out_features, r0 + rows_per_chunk)
        scores = chunk_scores(r0, r1)
        top = torch.topk(scores, min(n, scores.numel()))
        best_scores = torch.cat([best_scores, top.values])
        best_index = torch.cat([best_index, top.indices + r0 * in_features])
        if best_scores.numel() > n:
            # Stable sort keeps the lower position first among equal scores (deterministic).
            keep = torch.sort(best_scores, descending=True, stable=True).indices[:n]
            best_scores, best_index = best_scores[keep], best_index[keep]
    order = torch.sort(best_scores, descending=True, stable=True).indices
    return best_index[order], best_scores[order]


def top_candidates(dense_grad: torch.Tensor, num: int, chunk_elements: int | None = None) -> torch.Tensor:
    """Sorted flat positions of the ``num`` largest ``|dense_grad|`` entries (int64).

    By row chunks: a whole-matrix ``topk`` of ``|g|`` needs an fp32 copy and topk's own out·in work
    buffers on top of the gradient (at LLaMA-2-7B's 11008x4096, ~0.5 GiB at every phase start)."""
    out_features, in_features = dense_grad.shape
    num = min(num, dense_grad.numel())
    if num <= 0:
        return torch.zeros(0, dtype=torch.long, device=dense_grad.device)
    index, _ = _top_by_row_chunks(num, out_features, in_features,
                                  lambda r0, r1: dense_grad[r0:r1].reshape(-1).abs().float(),
                                  chunk_elements or _default_chunk(num), dense_grad.device)
    return index.sort().values


def ag_grow_order(candidates: torch.Tensor, mean_grad: torch.Tensor, staying: torch.Tensor, n: int) -> torch.Tensor:
    """Positions (into ``candidates``) of the ``n`` best candidates not in ``staying`` (sorted), best first."""
    eligible = (~isin_sorted(candidates, staying)).nonzero().view(-1)
    if eligible.numel() == 0 or n <= 0:
        return eligible[:0]
    order = torch.sort(mean_grad[eligible].abs(), descending=True, stable=True).indices
    return eligible[order[:n]]


def ma_grow_indices(row_acc: torch.Tensor, col_acc: torch.Tensor, active: torch.Tensor, n: int,
                    chunk_elements: int | None = None) -> torch.Tensor:
    """Flat positions of the ``n`` largest ``row_acc[r]·col_acc[c]`` over positions not in ``active``
    (sorted unique), best first. Extra memory O(n + chunk_elements); default chunk: max(2**20, 8·n)."""
    out_features, in_features = row_acc.numel(), col_acc.numel()
    if n <= 0:
        return torch.zeros(0, dtype=torch.long, device=row_acc.device)
    crow, _ = csr_pattern(active, out_features, in_features)

    def chunk_scores(r0: int, r1: int) -> torch.Tensor:
        scores = (row_acc[r0:r1, None].float() * col_acc[None, :].float()).view(-1)
        scores[active[int(crow[r0]) : int(crow[r1])].long() - r0 * in_features] = -torch.inf
        return scores

    index, scores = _top_by_row_chunks(n, out_features, in_features, chunk_scores,
                                       chunk_elements or _default_chunk(n), row_acc.device)
    return index[scores > -torch.inf]
