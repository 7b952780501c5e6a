"""Flat row-major index sets for a sparse delta over a dense ``[out, in]`` weight.

Invariant kept everywhere in spiel: indices are sorted and unique, int32 when ``out*in < 2**31``
(half the memory, and what the kernels read), int64 otherwise.
"""

from __future__ import annotations

import torch

INT32_LIMIT = 2**31


def index_dtype(numel: int) -> torch.dtype:
    """The dtype for flat indices into a tensor of ``numel`` entries."""
    return torch.int32 if numel < INT32_LIMIT else torch.int64


def random_subset(
    numel: int, k: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """A uniformly random sorted k-subset of ``range(numel)`` as int64, without an O(numel) tensor.

    Draws with replacement and tops up until ``k`` unique values are found; when ``k > numel / 2`` it
    draws the complement instead, so the expected number of rounds stays small.
    """
    if not 0 <= k <= numel:
        raise ValueError(f"cannot choose {k} positions out of {numel}")
    if 2 * k > numel:
        # Choose the positions to leave out, then list everything else (only here is O(numel) memory
        # used, and only because the result itself is that large).
        excluded = random_subset(numel, numel - k, generator, "cpu")
        keep = torch.ones(numel, dtype=torch.bool)
        keep[excluded] = False
        return keep.nonzero().view(-1).to(device)
    chosen = torch.empty(0, dtype=torch.int64)
    while chosen.numel() < k:
        need = k - chosen.numel()
        draw = torch.randint(0, numel, (need + need // 8 + 16,), generator=generator)
        merged = torch.cat([chosen, draw]).unique()  # sorted
        if merged.numel() > k:
            # Keep a uniformly random k of them (the new draws are as random as the old ones).
            perm = torch.randperm(merged.numel(), generator=generator)[:k]
            merged = merged[perm].sort().values
        chosen = merged
    return chosen.to(device)


def check_indices(indices: torch.Tensor, numel: int, name: str = "indices") -> None:
    """Raise ValueError unless ``indices`` is 1-D, sorted, unique and within ``[0, numel)``."""
    if indices.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(indices.shape)}")
    if indices.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be int32 or int64, got {indices.dtype}")
    if indices.numel() == 0:
        return
    if int(indices.min()) < 0 or int(indices.max()) >= numel:
        raise ValueError(f"{name} out of range [0, {numel})")
    if indices.numel() > 1 and not bool((indices[1:] > indices[:-1]).all()):
        raise ValueError(f"{name} must be sorted and unique")


def rows_cols(indices: torch.Tensor, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split flat row-major indices into (row, col), keeping the index dtype."""
    rows = torch.div(indices, in_features, rounding_mode="floor")
    return rows, indices - rows * in_features


def csr_pattern(
    indices: torch.Tensor, out_features: int, in_features: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(crow_indices, col_indices) of the CSR pattern of sorted flat indices; O(k + out) memory."""
    rows, cols = rows_cols(indices, in_features)
    counts = torch.bincount(rows, minlength=out_features)
    crow = torch.zeros(out_features + 1, dtype=indices.dtype, device=indices.device)
    crow[1:] = counts.cumsum(0)
    return crow, cols


# Membership by a boolean mask over the elements' range (CPU): a scatter and a gather instead of a binary search
# per element, which torch's CPU searchsorted does at 30–300 ns (16 × 65,536 positions against 16 sets of 25,891:
# 86 ms by searchsorted, 9 ms by mask). Used while the range is at most this many bytes ...
ISIN_MASK_BYTES = 1 << 26
# ... and at most this many bytes per element looked up or set entry: clearing the mask is part of the cost, and
# its memory stays of the order of the inputs' own (a reselection at 2.47% density needs 11–21).
ISIN_MASK_BYTES_PER_ENTRY = 32


def isin_sorted(elements: torch.Tensor, sorted_set: torch.Tensor) -> torch.Tensor:
    """``torch.isin(elements, sorted_set)`` for an ascending ``sorted_set``, by binary search (or, on CPU for
    integers of a small enough range, a mask over it).

    torch.isin sorts both inputs (and runs unique) on every call; at a reselection that was half of the
    selector's time. This is O(len(elements) · log len(sorted_set)) with no sort."""
    if sorted_set.numel() == 0 or elements.numel() == 0:
        return torch.zeros(elements.shape, dtype=torch.bool, device=elements.device)
    found = isin_by_mask(elements, sorted_set)
    if found is not None:
        return found
    sorted_set = sorted_set.to(elements.dtype)
    pos = torch.searchsorted(sorted_set, elements).clamp_(max=sorted_set.numel() - 1)
    return sorted_set[pos] == elements


def isin_by_mask(elements: torch.Tensor, members: torch.Tensor, by_row: bool = False) -> torch.Tensor | None:
    """``torch.isin(elements, members)`` for integer tensors on CPU (any order, repeats allowed) by a boolean
    mask over ``[min(elements), max(elements)]``; None where that range is too large for a mask to pay off
    (see ``ISIN_MASK_BYTES``) or on another device. With ``by_row``, row by row: ``elements`` ``[L, m]`` and
    ``members`` ``[L, s]``, each row of elements looked up in its own row of members."""
    if elements.device.type != "cpu" or elements.is_floating_point() or members.is_floating_point():
        return None
    if elements.numel() == 0 or members.numel() == 0:
        return torch.zeros(elements.shape, dtype=torch.bool)
    lo, hi = (int(v) for v in torch.aminmax(elements))
    rows = elements.shape[0] if by_row else 1
    span = hi - lo + 1
    size = rows * span
    if size > ISIN_MASK_BYTES or size > ISIN_MASK_BYTES_PER_ENTRY * (elements.numel() + members.numel()):
        return None
    members = members.long()
    row_start = torch.arange(rows)[:, None] * span if by_row else 0  # each row's own stretch of the mask
    # Members out of the elements' range match nothing: they go to one spare entry past the mask.
    slot = torch.where((members >= lo) & (members <= hi), members - lo + row_start, size)
    mask = torch.zeros(size + 1, dtype=torch.bool)
    mask.index_fill_(0, slot.view(-1), True)  # index_fill_ / index_select: several times faster than [] here
    looked_up = elements.long() - lo + row_start
    return mask.index_select(0, looked_up.reshape(-1)).view(elements.shape)
