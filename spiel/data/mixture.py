"""Which records of a source go into a mixture: caps and weights, deterministic for a seed.

* `weight` scales the source: 0.5 keeps a random half, 2.0 repeats every record twice (upsampling),
  1.5 repeats all once plus a random half. Default 1.0 (everything once).
* `cap` is an upper bound on the count after weighting (a random subset when it bites).

The random generator is seeded by (mixture seed, source name), so adding or reordering sources does not
change what another source contributes. Indices come back sorted (file order, repeats adjacent); the
builder shuffles the final mixture with the same seed.
"""

from __future__ import annotations

import zlib

import numpy as np

from spiel.data.errors import DataError


def target_count(n: int, cap: int | None = None, weight: float | None = 1.0) -> int:
    weight = 1.0 if weight is None else float(weight)
    if weight < 0:
        raise DataError(f"source weight must be >= 0, got {weight}")
    if cap is not None and int(cap) < 0:
        raise DataError(f"source cap must be >= 0, got {cap}")
    count = int(round(n * weight))
    return count if cap is None else min(count, int(cap))


def select_indices(candidates, cap: int | None, weight: float | None, seed: int, name: str) -> list[int]:
    """A deterministic multiset of `candidates` (row numbers of the valid records) per cap/weight."""
    candidates = np.asarray(candidates, dtype=np.int64)
    n = len(candidates)
    count = target_count(n, cap, weight)
    if n == 0 or count == 0:
        return []
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode("utf-8"))])
    repeats, rest = divmod(count, n)
    chosen = np.concatenate([np.tile(candidates, repeats), rng.choice(candidates, size=rest, replace=False)])
    return np.sort(chosen, kind="stable").tolist()
