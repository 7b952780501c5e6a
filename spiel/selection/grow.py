"""GROW: which inactive positions become active.

* SpIEL-AG ranks growth candidates by their mean accumulated step gradient ``|ĝ|``.
* SpIEL-MA ranks every inactive position by the SM3 score ``row_acc[r] · col_acc[c]`` (the paper's
  ``|m̂| = (r·c)^¼`` has the same order), computed in row chunks with a running top-n, so no
  ``[out, in]`` score matrix ever exists.
"""

from __future__ import annotations

import torch

from ..delta.indices import csr_pattern, isin_sorted

MA_CHUNK_ELEMENTS = 1 << 20  # score entries materialized at once (4 MiB of fp32)


def top_candidates(dense_grad: torch.Tensor, num: int) -> torch.Tensor:
    """Sorted flat positions of the ``num`` largest ``|dense_grad|`` entries (int64)."""
    flat = dense_grad.reshape(-1)
    num = min(num, flat.numel())
    return torch.topk(flat.abs().float(), num, sorted=False).indices.sort().values


def ag_grow_order(candidates: torch.Tensor, mean_grad: torch.Tensor, staying: torch.Tensor, n: int) -> torch.Tensor:
    """Positions (into ``candidates``) of the ``n`` best candidates not in ``staying`` (sorted), best first."""
    eligible = (~isin_sorted(candidates, staying)).nonzero().view(-1)
    if eligible.numel() == 0 or n <= 0:
        return eligible[:0]
    order = torch.sort(mean_grad[eligible].abs(), descending=True, stable=True).indices
    return eligible[order[:n]]


def ma_grow_indices(row_acc: torch.Tensor, col_acc: torch.Tensor, active: torch.Tensor, n: int,
                    chunk_elements: int = MA_CHUNK_ELEMENTS) -> torch.Tensor:
    """Flat positions of the ``n`` largest ``row_acc[r]·col_acc[c]`` over positions not in ``active``
    (sorted unique), best first. Extra memory O(n + chunk_elements)."""
    out_features, in_features = row_acc.numel(), col_acc.numel()
    if n <= 0:
        return torch.zeros(0, dtype=torch.long, device=row_acc.device)
    rows_per_chunk = max(1, chunk_elements // in_features)
    crow, _ = csr_pattern(active, out_features, in_features)
    best_scores = torch.empty(0, dtype=torch.float32, device=row_acc.device)
    best_index = torch.empty(0, dtype=torch.long, device=row_acc.device)
    for r0 in range(0, out_features, rows_per_chunk):
        r1 = min(out_features, r0 + rows_per_chunk)
        scores = (row_acc[r0:r1, None].float() * col_acc[None, :].float()).view(-1)
        local_active = active[int(crow[r0]) : int(crow[r1])].long() - r0 * in_features
        scores[local_active] = -torch.inf
        top = torch.topk(scores, min(n, scores.numel()))
        best_scores = torch.cat([best_scores, top.values])
        best_index = torch.cat([best_index, top.indices + r0 * in_features])
        if best_scores.numel() > n:
            # Stable sort keeps the lower position first among equal scores (deterministic).
            keep = torch.sort(best_scores, descending=True, stable=True).indices[:n]
            best_scores, best_index = best_scores[keep], best_index[keep]
    order = torch.sort(best_scores, descending=True, stable=True).indices
    best_scores, best_index = best_scores[order], best_index[order]
    return best_index[best_scores > -torch.inf]
