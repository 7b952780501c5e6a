"""Elias–Fano coding of a delta's sorted flat positions: what the compact (final) checkpoint stores.

k sorted, unique positions in ``[0, n)`` are split at ``L = floor(log2(n / k))`` bits (0 when k > n/2):

- ``low_bits``: the L low bits of each position, packed in order, least significant bit first
  (``ceil(k·L / 8)`` bytes);
- ``high_bits``: a bitmap of ``k + ((n - 1) >> L)`` bits where position i sets bit ``(x_i >> L) + i``
  (the high parts in unary; ``ceil(that / 8)`` bytes).

Bits are packed least significant first within each byte, and the unused bits of the last byte are zero.
That is about ``L + 2`` bits a position (7.0 to 7.5 at LLaMA-2-7B rank 64), against 16 + 32/row-length for
CSR with int16 columns. Encode and decode are whole-tensor operations (no loop per entry)."""

from __future__ import annotations

import torch

from spiel.delta.indices import check_indices


def low_width(n: int, k: int) -> int:
    """L: the number of low bits per position, ``floor(log2(n / k))``, or 0 when that is below 1."""
    return max(0, (n // k).bit_length() - 1) if k > 0 else 0


def high_length(n: int, k: int) -> int:
    """Bits in the high bitmap: one set bit per position plus one clear bit per high-part step."""
    return k + ((n - 1) >> low_width(n, k)) if k > 0 else 0


def encoded_sizes(n: int, k: int) -> tuple[int, int]:
    """(bytes of ``low_bits``, bytes of ``high_bits``) for k positions in ``[0, n)``."""
    return -(-k * low_width(n, k) // 8), -(-high_length(n, k) // 8)


def work_dtype(n: int, k: int) -> torch.dtype:
    """int32 where every intermediate fits (far faster on CPU than int64), else int64: bitmap offsets
    reach n + k, and a corrupt low part can take a position to n + n/k (caught after decoding)."""
    return torch.int32 if 2 * n + k < 2**31 else torch.int64


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """uint8 bytes of a 1-D uint8 tensor of 0/1, least significant bit first, the last byte zero padded."""
    padded = torch.zeros(-(-bits.numel() // 8) * 8, dtype=torch.uint8)
    padded[: bits.numel()] = bits
    eights = padded.view(-1, 8)
    packed = eights[:, 0].clone()
    for bit in range(1, 8):  # eight whole-tensor steps, one per bit of a byte
        packed |= eights[:, bit] << bit
    return packed


def unpack_bits(data: torch.Tensor) -> torch.Tensor:
    """The bits (uint8 0/1) of uint8 bytes, least significant first: ``8 * len(data)`` of them."""
    bits = torch.empty(data.numel(), 8, dtype=torch.uint8)
    for bit in range(8):
        bits[:, bit] = (data >> bit) & 1
    return bits.view(-1)


def encode(positions: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    """``{"low_bits", "high_bits"}`` (uint8) of sorted unique ``positions`` in ``[0, n)``."""
    check_indices(positions, n, "positions")
    k = positions.numel()
    width = low_width(n, k)
    x = positions.detach().cpu().to(work_dtype(n, k))
    low = torch.empty(0, dtype=torch.uint8)
    if width:  # [k, L] bits, least significant first, built one bit plane at a time
        low = torch.stack([(x >> bit).to(torch.uint8) & 1 for bit in range(width)], dim=1).view(-1)
    high = torch.zeros(high_length(n, k), dtype=torch.uint8)
    high[(x >> width) + torch.arange(k, dtype=x.dtype)] = 1
    return {"low_bits": pack_bits(low), "high_bits": pack_bits(high)}


def decode(low_bits: torch.Tensor, high_bits: torch.Tensor, n: int, k: int, prefix: str = "") -> torch.Tensor:
    """The positions of ``encode``'s output (int32 or int64, see ``work_dtype``), or ValueError naming the
    tensor that is malformed (``prefix``: put before ``low_bits`` / ``high_bits`` in the message, e.g. the
    module name).

    Checked: both are 1-D uint8 of the sizes k and n imply, the padding bits are zero, the bitmap holds
    exactly k set bits, and the positions are strictly increasing and inside ``[0, n)`` (the bitmap alone
    guarantees non-decreasing high parts, not that the low bits keep them apart or in range)."""
    width = low_width(n, k)
    for field, data, size, bits in (
        ("low_bits", low_bits, encoded_sizes(n, k)[0], k * width),
        ("high_bits", high_bits, encoded_sizes(n, k)[1], high_length(n, k)),
    ):
        if data.dtype != torch.uint8:
            raise ValueError(f"'{prefix}{field}' must be uint8, got {data.dtype}")
        if tuple(data.shape) != (size,):
            raise ValueError(
                f"'{prefix}{field}' has shape {list(data.shape)}, expected [{size}] "
                f"({bits} bits: k={k} positions in [0, {n}) at {width} low bits each)"
            )
        if size and int(data[-1]) >> (bits - 8 * (size - 1)):
            raise ValueError(
                f"'{prefix}{field}': the {8 * size - bits} padding bit(s) of the last byte are not zero"
            )
    ones = unpack_bits(high_bits).nonzero().view(-1)
    if ones.numel() != k:
        raise ValueError(
            f"'{prefix}high_bits' holds {ones.numel()} set bits, expected one per position (k={k})"
        )
    work = work_dtype(n, k)
    low = torch.zeros(k, dtype=work)
    low_planes = unpack_bits(low_bits)[: k * width].view(k, width)
    for bit in range(width):
        low |= low_planes[:, bit].to(work) << bit
    x = ((ones.to(work) - torch.arange(k, dtype=work)) << width) | low
    if k and int(x.max()) >= n:  # (never below 0: bit i+h of the bitmap has i set bits before it)
        raise ValueError(
            f"'{prefix}low_bits' and 'high_bits' decode to a position past the weight: {int(x.max())} >= {n}"
        )
    steps = x[1:] - x[:-1]
    if bool((steps <= 0).any()):
        at = int((steps <= 0).nonzero()[0])
        raise ValueError(
            f"'{prefix}low_bits' and 'high_bits' decode to positions not strictly increasing "
            f"at position {at + 1} ({int(x[at])} then {int(x[at + 1])})"
        )
    return x
