"""Reselection of many matrices at once: the drop order, the growth order and the slot bookkeeping of every
matrix of one shape as row-wise operations over stacked ``[L, ·]`` tensors.

Per matrix, a reselection is a few dozen small kernels and, on a GPU, a host round-trip for every tensor
whose size depends on the data (each boolean mask, each ``nonzero``). Stacking the matrices that share a
shape and ``k`` (a transformer's q/k/v/o, its gate/up, its down projections) makes each step one kernel for
the whole group, and the data-dependent sizes are read back once per group, not once per matrix and step.

Every function here gives, row by row, exactly what its per-matrix counterpart gives (``drop.drop_order``,
``grow.ag_grow_order``, ``grow.ma_grow_indices``), ties included: the orders are integer sorts of the same
keys (``order.py``) and the scores the same elementwise float operations.
"""

from __future__ import annotations

import math

import torch

from spiel.delta.indices import isin_by_mask, isin_sorted
from spiel.selection import grow
from spiel.selection.order import _MAGNITUDE, _sortable

_LAST = torch.iinfo(torch.int64).max  # a key that sorts after every real one

# Score entries materialized at once for a whole group: 64 Mi fp32 (256 MiB) on CUDA, where fewer, larger
# chunks mean fewer host round-trips, at most 1/32 of the free memory; 4 Mi (16 MiB) on CPU.
GROUP_CHUNK_ELEMENTS_CUDA = 1 << 26
GROUP_CHUNK_ELEMENTS_CPU = 1 << 22


def group_chunk_elements(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(1 << 20, min(GROUP_CHUNK_ELEMENTS_CUDA, free // 32 // 4))
    return GROUP_CHUNK_ELEMENTS_CPU


def layer_groups(layers: dict) -> list[list[str]]:
    """Names of the layers that can be reselected together: same dense shape, ``k``, dtypes and device."""
    groups: dict[tuple, list[str]] = {}
    for name, layer in layers.items():
        key = (
            layer.out_features,
            layer.in_features,
            layer.k,
            layer.values.dtype,
            layer.indices.dtype,
            str(layer.values.device),
        )
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def isin_sorted_rows(elements: torch.Tensor, sorted_sets: torch.Tensor) -> torch.Tensor:
    """Row by row, ``isin_sorted(elements[i], sorted_sets[i])`` (``[L, m]`` against ascending ``[L, s]``)."""
    if sorted_sets.shape[1] == 0 or elements.shape[1] == 0:
        return torch.zeros(elements.shape, dtype=torch.bool, device=elements.device)
    found = isin_by_mask(elements, sorted_sets, by_row=True)
    if found is not None:
        return found
    sorted_sets = sorted_sets.to(elements.dtype)
    pos = torch.searchsorted(sorted_sets, elements).clamp_(max=sorted_sets.shape[1] - 1)
    return sorted_sets.gather(1, pos) == elements


def _row_order(scores: torch.Tensor, descending: bool, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Row by row, ``order_by(scores[i], descending)`` as int64 keys sorted ascending; ``exclude``d entries get
    the key ``_LAST`` (they sort after every other). The position is ``key & _MAGNITUDE``."""
    positions = torch.arange(scores.shape[1], device=scores.device)
    key = (_sortable(scores, descending) << 32) | positions
    if exclude is not None:
        key = key.masked_fill(exclude, _LAST)
    return torch.sort(key, dim=1).values


def drop_order_rows(
    values: torch.Tensor, n: int, criterion: str = "magnitude", references: torch.Tensor | None = None
) -> torch.Tensor:
    """Row by row, ``drop.drop_order(values[i], n, criterion, references[i])``: ``[L, n]`` slots, weakest first."""
    score = values.detach().float()
    if criterion == "change":
        score = score - references.float()
    return _row_order(score.abs(), descending=False)[:, :n] & _MAGNITUDE


def sort_rows(values: torch.Tensor, bound: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.sort(values, dim=1, stable=True)`` for integers in ``[0, bound)``: the rows side by side (row ``i``
    offset by ``i · bound``) in one 1-D sort, about twice as fast on CPU as the row-wise sort."""
    L, m = values.shape
    rows = torch.arange(L, device=values.device)[:, None]
    found = torch.sort((values.long() + rows * bound).view(-1), stable=True)
    return found.values.view(L, m) - rows * bound, found.indices.view(L, m) - rows * m


def kept_slots(slots: torch.Tensor, k: int) -> torch.Tensor:
    """The ``[L, k - n]`` slots not in ``slots`` (``[L, n]``, distinct per row), ascending."""
    dropped = torch.zeros(slots.shape[0], k, dtype=torch.bool, device=slots.device)
    dropped.scatter_(1, slots, True)
    return valid_first(~dropped)[:, : k - slots.shape[1]]


def valid_first(mask: torch.Tensor) -> torch.Tensor:
    """Per row, the positions with ``mask`` true in order, then the others in order (a stable compaction, what
    ``torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices`` gives), by running counts, no sort."""
    L, m = mask.shape
    taken = mask.long()
    before_true = torch.cumsum(taken, dim=1) - taken  # true entries to the left of each entry
    before_false = torch.arange(m, device=mask.device) - before_true  # false ones (an entry's own excluded)
    target = torch.where(mask, before_true, before_true[:, -1:] + taken[:, -1:] + before_false)
    order = torch.empty_like(target)
    order.scatter_(1, target, torch.arange(m, device=mask.device).expand(L, m))
    return order


def ag_grow_order_rows(
    candidates: torch.Tensor, scores: torch.Tensor, staying: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row by row, ``grow.ag_grow_order(candidates[i], scores[i], staying[i], n)``: ``(chosen [L, m], valid)``
    with ``m = min(n, K)``; row i's result is ``chosen[i][valid[i]]`` (its valid entries come first)."""
    eligible = ~isin_sorted_rows(candidates, staying)
    keys = _row_order(scores, descending=True, exclude=~eligible)[:, :n]
    valid = keys != _LAST
    return torch.where(valid, keys & _MAGNITUDE, 0), valid


def ma_grow_rows(
    row_acc: torch.Tensor,
    col_acc: torch.Tensor,
    active: torch.Tensor,
    n: int,
    chunk_elements: int | None = None,
) -> tuple[torch.Tensor, list[bool]] | None:
    """Row by row, ``grow.ma_grow_indices(row_acc[i], col_acc[i], active[i], n)`` by its sampled threshold,
    ``[L, n]``, for the rows where the threshold lets at least ``n`` scores through (``ok[i]``; the caller
    computes the others one by one, as the per-matrix rule's fallback does). None where the per-matrix rule
    would not sample a threshold at all, or a sampled threshold is not finite.

    Host round-trips: one for the thresholds, one or two to find the scores that pass them (one per chunk
    where they are scanned), one for the per-row counts."""
    L, out_features = row_acc.shape
    in_features = col_acc.shape[1]
    total = out_features * in_features
    device = row_acc.device
    sample_size = grow.SAMPLE_SIZE
    if n <= 0 or 4 * n >= total or total <= sample_size or total >= 1 << 31:
        return None
    gen = torch.Generator(device=device).manual_seed(grow.SAMPLE_SEED)
    sample = torch.randint(total, (sample_size,), generator=gen, device=device)
    srows = torch.div(sample, in_features, rounding_mode="floor")
    sample_scores = row_acc[:, srows].float() * col_acc[:, sample - srows * in_features].float()
    sample_scores.masked_fill_(isin_sorted_rows(sample.expand(L, -1).contiguous(), active.long()), -torch.inf)
    rank = grow.threshold_rank(n, total)
    threshold = torch.topk(sample_scores, rank, dim=1, sorted=False).values.min(dim=1).values
    if not all(math.isfinite(v) for v in threshold.tolist()):
        return None
    if sorted_columns_apply(row_acc, col_acc, threshold):
        owner, position, score = passing_by_sorted_columns(row_acc, col_acc, threshold)
    else:
        owner, position, score = passing_by_scan(row_acc, col_acc, threshold, chunk_elements)
    # Active positions would have scored -inf (below a finite threshold): drop them from what passed.
    offset = torch.arange(L, device=device)[:, None] * total  # rows' sets side by side: one ascending set
    inactive = ~isin_sorted(owner * total + position, (active.long() + offset).view(-1))
    keep = inactive.nonzero().view(-1)
    owner, position, score = (t.index_select(0, keep) for t in (owner, position, score))
    # Per row, best first, ties to the lower position: the per-matrix key, then a stable sort by row.
    by_key = torch.sort((_sortable(score, True) << 32) | position).indices
    order = by_key.index_select(0, torch.sort(owner.index_select(0, by_key), stable=True).indices)
    counts = torch.bincount(owner, minlength=L).tolist()
    starts = [0]
    for c in counts[:-1]:
        starts.append(starts[-1] + c)
    ok = [c >= n for c in counts]
    take = torch.tensor([s if good else 0 for s, good in zip(starts, ok, strict=True)], device=device)
    if order.numel() == 0:
        return torch.zeros(L, n, dtype=torch.long, device=device), ok
    index = (take[:, None] + torch.arange(n, device=device)).clamp_(max=order.numel() - 1)
    grown = position.index_select(0, order.index_select(0, index.view(-1))).view(L, n)
    return grown, ok


# Relative margin on the column bound of :func:`passing_by_sorted_columns`: a float32 product rounds by at most
# 2**-24 relative (round to nearest, normal range), far inside it.
_BOUND_MARGIN = 1e-6
# Thresholds below this could make the products near them subnormal, where the relative rounding bound fails.
_SMALLEST_THRESHOLD = 1e-30


def sorted_columns_apply(row_acc: torch.Tensor, col_acc: torch.Tensor, threshold: torch.Tensor) -> bool:
    """Whether :func:`passing_by_sorted_columns` finds exactly what the scan finds: every accumulator finite and
    non-negative (SM3's are maxima of squares), every threshold normal and positive. One host round-trip."""
    return bool(
        (threshold >= _SMALLEST_THRESHOLD).all()
        & torch.isfinite(threshold).all()
        & torch.isfinite(row_acc).all()
        & (row_acc >= 0).all()
        & torch.isfinite(col_acc).all()
        & (col_acc >= 0).all()
    )


def passing_by_scan(
    row_acc: torch.Tensor, col_acc: torch.Tensor, threshold: torch.Tensor, chunk_elements: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(owner, position, score)`` of every ``score = row_acc[owner, r] · col_acc[owner, c] >= threshold[owner]``
    (``position = r·in + c``), every product computed, by chunks of rows of the whole group."""
    L, out_features = row_acc.shape
    in_features = col_acc.shape[1]
    budget = chunk_elements or group_chunk_elements(row_acc.device)
    chunk_rows = grow.rows_per_chunk(budget, L * in_features)  # the rows of all L matrices at once
    owners, positions, scores = [], [], []
    for r0 in range(0, out_features, chunk_rows):
        r1 = min(out_features, r0 + chunk_rows)
        chunk = (row_acc[:, r0:r1, None].float() * col_acc[:, None, :].float()).view(L, -1)
        owner, position = (chunk >= threshold[:, None]).nonzero(as_tuple=True)
        owners.append(owner)
        positions.append(position + r0 * in_features)
        scores.append(chunk[owner, position])
    return torch.cat(owners), torch.cat(positions), torch.cat(scores)


def passing_by_sorted_columns(
    row_acc: torch.Tensor, col_acc: torch.Tensor, threshold: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`passing_by_scan`'s entries (in another order) with only about as many products as pass.

    For ``a = row_acc[r] >= 0`` the float32 product ``a·b`` does not decrease with ``b``, so the columns that pass
    in row ``r`` are the largest ``col_acc`` down to about ``threshold / a``. Each row's count of columns at or
    above that bound (less a margin wider than the product's rounding) comes from one binary search over the
    sorted columns; only those products are computed, with the scan's own float32 multiply, and compared with
    the threshold exactly as the scan compares them. Needs :func:`sorted_columns_apply`."""
    L, out_features = row_acc.shape
    in_features = col_acc.shape[1]
    device = row_acc.device
    col = col_acc.float()
    col_sorted, col_order = torch.sort(col, dim=1)  # ascending
    bound = threshold.double()[:, None] / row_acc.double() * (1 - _BOUND_MARGIN)  # a = 0: inf, no column
    count = in_features - torch.searchsorted(col_sorted.double(), bound.contiguous())  # [L, out]
    count = count.view(-1)
    line = torch.repeat_interleave(torch.arange(L * out_features, device=device), count)  # owner·out + r
    start = torch.cumsum(count, 0) - count
    rank = torch.arange(line.numel(), device=device) - start.index_select(
        0, line
    )  # 0: the row's largest column
    owner = torch.div(line, out_features, rounding_mode="floor")
    row = line - owner * out_features
    column = col_order.view(-1).index_select(0, owner * in_features + (in_features - 1) - rank)
    score = row_acc.float().view(-1).index_select(0, line) * col.view(-1).index_select(
        0, owner * in_features + column
    )
    keep = (score >= threshold.index_select(0, owner)).nonzero().view(-1)
    owner, row, column, score = (t.index_select(0, keep) for t in (owner, row, column, score))
    return owner, row * in_features + column, score
