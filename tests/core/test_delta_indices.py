"""Flat index sets (spiel.delta.indices) against plain-Python references: random subsets (both of their
draws), index checks at their limits, CSR patterns with empty rows, and membership by binary search."""

from __future__ import annotations

import pytest
import torch

from spiel.delta import indices as indices_module
from spiel.delta.indices import check_indices, csr_pattern, isin_sorted, random_subset, rows_cols


@pytest.mark.parametrize("numel, k", [(100, 50), (100, 51), (100, 90), (100, 100), (7, 0), (1, 1)])
def test_random_subsets_are_sorted_unique_k_of_range(numel, k):
    got = random_subset(numel, k, torch.Generator().manual_seed(numel + k)).tolist()
    assert len(got) == k and got == sorted(set(got)) and all(0 <= p < numel for p in got)


def test_more_than_half_is_the_complement_of_the_same_draw_of_the_rest():
    """k > numel / 2 draws the numel - k positions left out with the same generator, then lists the rest;
    k = numel / 2 exactly draws the k positions themselves."""
    for numel, k in [(100, 51), (100, 90), (1000, 999)]:
        left_out = set(random_subset(numel, numel - k, torch.Generator().manual_seed(3)).tolist())
        got = random_subset(numel, k, torch.Generator().manual_seed(3)).tolist()
        assert got == [p for p in range(numel) if p not in left_out], (numel, k)
    half = random_subset(100, 50, torch.Generator().manual_seed(3))
    other = random_subset(100, 50, torch.Generator().manual_seed(3))
    assert torch.equal(half, other) and half.dtype == torch.int64
    with pytest.raises(ValueError, match="cannot choose 101 positions out of 100"):
        random_subset(100, 101)
    with pytest.raises(ValueError, match="cannot choose -1 positions out of 100"):
        random_subset(100, -1)


def test_random_subsets_are_uniform():
    """Every position of 20 is chosen about k/numel of the time (k = 5 and 15: both draws)."""
    for k in (5, 15):
        counts = torch.zeros(20)
        for seed in range(2000):
            counts[random_subset(20, k, torch.Generator().manual_seed(seed)).long()] += 1
        expected = 2000 * k / 20
        assert (counts - expected).abs().max() < 5 * expected**0.5, (k, counts)


@pytest.mark.parametrize(
    "indices, problem",
    [
        (torch.tensor([0, 9], dtype=torch.int32), None),  # exactly the first and the last
        (torch.tensor([0, 10]), r"idx out of range \[0, 10\)"),  # one past
        (torch.tensor([-1, 3]), r"idx out of range \[0, 10\)"),
        (torch.tensor([3, 3]), "idx must be sorted and unique"),
        (torch.tensor([4, 3]), "idx must be sorted and unique"),
        (torch.tensor([0, 5, 3]), "idx must be sorted and unique"),  # each step, not only the first
        (torch.tensor([[1, 2]]), r"idx must be 1-D, got shape \(1, 2\)"),
        (torch.tensor([1.0, 2.0]), "idx must be int32 or int64, got torch.float32"),
        (torch.tensor([1, 2], dtype=torch.int16), "idx must be int32 or int64, got torch.int16"),
        (torch.empty(0, dtype=torch.int64), None),
        (torch.tensor([7]), None),
    ],
)
def test_check_indices_at_the_limits(indices, problem):
    if problem is None:
        check_indices(indices, 10, "idx")
    else:
        with pytest.raises(ValueError, match=problem):
            check_indices(indices, 10, "idx")


def test_csr_pattern_with_empty_first_middle_and_last_rows():
    """4x5: entries in rows 1 and 2 only (hand-computed row pointers and columns)."""
    indices = torch.tensor([5, 9, 10, 14], dtype=torch.int32)  # (1,0) (1,4) (2,0) (2,4)
    crow, cols = csr_pattern(indices, 4, 5)
    assert crow.tolist() == [0, 0, 2, 4, 4] and cols.tolist() == [0, 4, 0, 4]
    assert crow.dtype == cols.dtype == torch.int32
    rows, cols = rows_cols(torch.tensor([0, 4, 5, 19]), 5)
    assert rows.tolist() == [0, 0, 1, 3] and cols.tolist() == [0, 4, 0, 4]


@pytest.mark.parametrize("dtype", [torch.int64, torch.float64], ids=["mask", "binary-search"])
def test_isin_sorted_at_the_ends_of_the_set_and_outside_it(dtype):
    """Integers on CPU take the mask, floats the binary search: either way an empty set or no elements."""
    sorted_set = torch.tensor([2, 5, 9], dtype=torch.int32 if dtype == torch.int64 else dtype)
    elements = torch.tensor([[0, 2, 3], [5, 9, 10]], dtype=dtype)
    expected = [[p in (2, 5, 9) for p in row] for row in elements.tolist()]
    assert isin_sorted(elements, sorted_set).tolist() == expected
    assert isin_sorted(elements, torch.empty(0, dtype=dtype)).tolist() == [[False] * 3] * 2
    assert isin_sorted(torch.empty(0, dtype=dtype), sorted_set).tolist() == []


def test_isin_by_mask_takes_ranges_up_to_32_bytes_per_entry():
    """The mask is used while its range is at most ISIN_MASK_BYTES_PER_ENTRY (32) bytes per element and member:
    3 entries allow 96; members outside the elements' range match nothing."""
    assert indices_module.ISIN_MASK_BYTES_PER_ENTRY == 32
    members = torch.tensor([95, -7])  # 4 entries with [0, 95]: 128 bytes allowed
    got = indices_module.isin_by_mask(torch.tensor([0, 95]), members)
    assert got is not None and got.tolist() == [False, True]
    members = torch.tensor([95])  # 3 entries: exactly 96 allowed, 97 not
    assert indices_module.isin_by_mask(torch.tensor([0, 95]), members).tolist() == [False, True]
    assert indices_module.isin_by_mask(torch.tensor([0, 96]), members) is None


def test_isin_by_mask_row_by_row_looks_each_row_up_in_its_own_members():
    """by_row: row i of the elements against row i of the members only (each row its own stretch of the mask),
    against torch.isin row by row; several rows, members outside the elements' range included."""
    gen = torch.Generator().manual_seed(6)
    elements = torch.randint(0, 40, (4, 25), generator=gen)
    members = torch.randint(-5, 45, (4, 12), generator=gen)
    got = indices_module.isin_by_mask(elements, members, by_row=True)
    assert got is not None and got.shape == elements.shape
    for row in range(4):
        assert got[row].tolist() == torch.isin(elements[row], members[row]).tolist(), row


def test_index_dtype_is_int32_below_2_31_entries_and_int64_from_there():
    from spiel.delta.indices import index_dtype

    assert [index_dtype(n) for n in (0, 2**31 - 1, 2**31, 2**31 + 1, 2**40)] == [
        torch.int32,
        torch.int32,
        torch.int64,
        torch.int64,
        torch.int64,
    ]
