"""Elias–Fano coding of sorted flat positions (spiel.checkpoint.elias_fano): the bytes are those the format
description gives (checked against a bit-by-bit Python reference), every position set round-trips,
and every malformed input is refused naming the tensor."""

from __future__ import annotations

import math

import pytest
import torch

from spiel.checkpoint import elias_fano as ef
from spiel.delta.indices import random_subset


def reference_encode(positions: list[int], n: int) -> tuple[bytes, bytes]:
    """The format as written down, one bit at a time: L = floor(log2(n/k)); the L low bits of each
    position in order, least significant first; a bitmap of k + ((n-1) >> L) bits with bit
    (x_i >> L) + i set; bytes filled least significant bit first, zero padded."""
    k = len(positions)
    width = int(math.floor(math.log2(n / k))) if k and n / k >= 2 else 0
    low = [(x >> b) & 1 for x in positions for b in range(width)]
    high = [0] * (k + ((n - 1) >> width) if k else 0)
    for i, x in enumerate(positions):
        high[(x >> width) + i] = 1

    def pack(bits):
        bits = bits + [0] * (-len(bits) % 8)
        return bytes(sum(bits[j + b] << b for b in range(8)) for j in range(0, len(bits), 8))

    return pack(low), pack(high)


def flat(rows_cols, in_features):
    return torch.tensor(sorted(r * in_features + c for r, c in rows_cols), dtype=torch.int64)


OUT, IN = 12, 40
N = OUT * IN
CASES = {
    "k=0": torch.empty(0, dtype=torch.int64),
    "k=1 first": torch.tensor([0]),
    "k=1 last": torch.tensor([N - 1]),
    "first and last": torch.tensor([0, N - 1]),
    "empty rows": flat([(0, 3), (0, 39), (5, 0), (5, 7), (11, 20)], IN),  # rows 1-4, 6-10 empty
    "all in one row": flat([(7, c) for c in range(0, IN, 3)], IN),
    "one full row": flat([(3, c) for c in range(IN)], IN),
    "k=n": torch.arange(N),
    "k=n-1": torch.cat([torch.arange(17), torch.arange(18, N)]),
    "half": torch.arange(0, N, 2),
    "random 2.5%": random_subset(N, 12, torch.Generator().manual_seed(0)),
    "random 30%": random_subset(N, 144, torch.Generator().manual_seed(1)),
}


@pytest.mark.parametrize("name", CASES)
def test_encode_gives_the_described_bytes_and_decodes_to_the_same_positions(name):
    positions = CASES[name]
    k = positions.numel()
    encoded = ef.encode(positions, N)
    low, high = reference_encode(positions.tolist(), N)
    assert encoded["low_bits"].dtype == encoded["high_bits"].dtype == torch.uint8
    assert bytes(encoded["low_bits"].tolist()) == low
    assert bytes(encoded["high_bits"].tolist()) == high
    assert ef.encoded_sizes(N, k) == (len(low), len(high))
    decoded = ef.decode(encoded["low_bits"], encoded["high_bits"], N, k)
    assert decoded.dtype == torch.int32 and torch.equal(decoded.long(), positions.long())


@pytest.mark.parametrize(
    "n, k",
    [(1, 1), (2, 1), (7, 3), (1000, 999), (4096 * 4096, 524_288), (2**30 - 1, 2), (2**30, 1), (2**31 + 5, 3)],
)
def test_round_trip_over_shapes_and_densities(n, k):
    positions = random_subset(n, k, torch.Generator().manual_seed(n % 97 + k))
    encoded = ef.encode(positions.to(torch.int64 if n >= 2**31 else torch.int32), n)
    decoded = ef.decode(encoded["low_bits"], encoded["high_bits"], n, k)
    assert decoded.dtype == (torch.int64 if 2 * n + k >= 2**31 else torch.int32)
    assert torch.equal(decoded.long(), positions)


def test_low_width_is_floor_log2_of_n_over_k():
    """... and 0 below 1, also when k > n (n // k = 0: floor(log2) would be negative)."""
    for n, k in [
        (100, 1),
        (100, 3),
        (100, 50),
        (100, 51),
        (100, 100),
        (100, 101),
        (2**20, 2**15),
        (2**20, 2**15 + 1),
    ]:
        expected = int(math.floor(math.log2(n / k))) if n / k >= 2 else 0
        assert ef.low_width(n, k) == expected, (n, k)


def test_no_positions_have_no_low_bits():
    """k = 0 (a matrix with no entries): no low bits, so decode's shape message for stray bytes says 0."""
    assert ef.low_width(N, 0) == 0
    with pytest.raises(
        ValueError, match=r"has shape \[1\], expected \[0\] \(0 bits: k=0 .* at 0 low bits each\)"
    ):
        ef.decode(torch.zeros(1, dtype=torch.uint8), torch.empty(0, dtype=torch.uint8), N, 0)


def test_int32_work_exactly_while_every_intermediate_fits():
    """Bitmap offsets reach n + k and a corrupt low part n + n/k: int32 while 2n + k < 2^31, one past int64."""
    for n, k in [(2**30 - 1, 1), (2**30 - 2, 3), (2**29, 2**30 - 1)]:
        assert ef.work_dtype(n, k) == torch.int32 and ef.work_dtype(n, k + 1) == torch.int64, (n, k)


def test_high_length_and_sizes_at_byte_boundaries():
    """k + ((n - 1) >> L) bitmap bits and k·L low bits, rounded up to whole bytes (hand-computed; 64, 8
    fills its 3 low bytes and 9, 8 its 2 high bytes exactly, with no padding bits)."""
    for n, k, low_bytes, high_bits in [
        (16, 2, 1, 3),
        (64, 8, 3, 15),
        (8, 8, 0, 15),
        (9, 8, 0, 16),
        (17, 1, 1, 2),
    ]:
        assert ef.high_length(n, k) == high_bits, (n, k)
        assert ef.encoded_sizes(n, k) == (low_bytes, -(-high_bits // 8)), (n, k)
        positions = random_subset(n, k, torch.Generator().manual_seed(n + k))
        low, high = reference_encode(positions.tolist(), n)
        encoded = ef.encode(positions, n)
        assert bytes(encoded["low_bits"].tolist()) == low and bytes(encoded["high_bits"].tolist()) == high
        assert torch.equal(ef.decode(encoded["low_bits"], encoded["high_bits"], n, k).long(), positions)


def test_about_two_plus_log2_of_one_over_density_bits_a_position():
    """LLaMA-2-7B rank 64: 4096x4096 at 3.1% and 11008x4096 at 2.1%."""
    for (out, inp), bits in [((4096, 4096), 7.0), ((11008, 4096), 7.46)]:
        n, k = out * inp, 64 * (out + inp)
        low, high = ef.encoded_sizes(n, k)
        assert 8 * (low + high) / k == pytest.approx(bits, abs=0.01)


def test_encode_refuses_unsorted_repeated_or_out_of_range_positions():
    for bad, message in [
        (torch.tensor([3, 1]), "sorted and unique"),
        (torch.tensor([1, 1]), "sorted and unique"),
        (torch.tensor([0, N]), r"out of range \[0, 480\)"),
        (torch.tensor([-1, 2]), "out of range"),
    ]:
        with pytest.raises(ValueError, match=message):
            ef.encode(bad, N)


# -- every check of decode ------------------------------------------------------------------------------
# n = 10, k = 2: L = 2, the bitmap has 2 + (9 >> 2) = 4 bits. Positions 8, 9: low bits 00, 01 -> 0b0100;
# high parts 2, 2 -> bits 2 and 3 set -> 0b1100.
SMALL_N, SMALL_K = 10, 2


def small():
    encoded = ef.encode(torch.tensor([8, 9]), SMALL_N)
    assert encoded["low_bits"].tolist() == [0b0100] and encoded["high_bits"].tolist() == [0b1100]
    return encoded["low_bits"], encoded["high_bits"]


def decode_small(low, high):
    return ef.decode(low, high, SMALL_N, SMALL_K, prefix="M.")


BAD = [
    ("low-int8", lambda lo, hi: (lo.to(torch.int8), hi), r"'M.low_bits' must be uint8, got torch.int8"),
    ("high-int32", lambda lo, hi: (lo, hi.to(torch.int32)), r"'M.high_bits' must be uint8, got torch.int32"),
    ("low-short", lambda lo, hi: (lo[:0], hi), r"'M.low_bits' has shape \[0\], expected \[1\] \(4 bits: k=2"),
    ("high-long", lambda lo, hi: (lo, torch.cat([hi, hi])), r"'M.high_bits' has shape \[2\], expected \[1\]"),
    ("high-2d", lambda lo, hi: (lo, hi.view(1, 1)), r"'M.high_bits' has shape \[1, 1\], expected \[1\]"),
    ("low-padding", lambda lo, hi: (lo | 0b10000, hi), r"'M.low_bits': the 4 padding bit\(s\) .* not zero"),
    (
        "high-padding",
        lambda lo, hi: (lo, hi | 0b100000),
        r"'M.high_bits': the 4 padding bit\(s\) .* not zero",
    ),
    (
        "high-bit-lost",
        lambda lo, hi: (lo, hi & 0b0111),
        r"'M.high_bits' holds 1 set bits, expected one per position \(k=2\)",
    ),
    ("high-bit-added", lambda lo, hi: (lo, hi | 0b0001), r"'M.high_bits' holds 3 set bits"),
    ("past-the-weight", lambda lo, hi: (lo | 0b1100, hi), r"decode to a position past the weight: 11 >= 10"),
    ("exactly-n", lambda lo, hi: (lo ^ 0b1100, hi), r"decode to a position past the weight: 10 >= 10"),
    ("repeated", lambda lo, hi: (lo & 0b0011, hi), r"not strictly increasing at position 1 \(8 then 8\)"),
    ("decreasing", lambda lo, hi: (lo ^ 0b0101, hi), r"not strictly increasing at position 1 \(9 then 8\)"),
]


@pytest.mark.parametrize("case, corrupt, message", BAD, ids=[b[0] for b in BAD])
def test_decode_refuses_malformed_input_naming_the_tensor(case, corrupt, message):
    low, high = small()
    assert decode_small(low, high).tolist() == [8, 9]
    with pytest.raises(ValueError, match=message):
        decode_small(*corrupt(low.clone(), high.clone()))


def test_decode_refuses_positions_out_of_order_across_high_parts():
    # n = 64, k = 4: L = 4. Positions 1, 20, 22, 40; make the third one's low bits 0b0011 -> 19 < 20.
    low, high = ef.encode(torch.tensor([1, 20, 22, 40]), 64).values()
    bits = ef.unpack_bits(low)
    bits[8:12] = torch.tensor([1, 1, 0, 0], dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"not strictly increasing at position 2 \(20 then 19\)"):
        ef.decode(ef.pack_bits(bits), high, 64, 4)
