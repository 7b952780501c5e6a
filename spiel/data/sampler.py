"""Length-grouped batching: batches of similar length waste less compute on padding.

Like the HF Trainer's `group_by_length`: shuffle, cut into mega-batches of `batch_size * mega_batch_mult`,
sort each mega-batch by length (longest first), and put the batch holding the longest example first
so an out-of-memory error shows up at step one rather than hours in. Deterministic for (seed, epoch).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def length_grouped_indices(lengths: Sequence[int], batch_size: int, seed: int = 0,
                           mega_batch_mult: int = 50) -> list[int]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lengths = np.asarray(lengths)
    order = np.random.default_rng(seed).permutation(len(lengths))
    mega = batch_size * max(1, mega_batch_mult)
    groups = [order[i:i + mega] for i in range(0, len(order), mega)]
    # stable sort, longest first, inside each mega-batch
    groups = [g[np.argsort(-lengths[g], kind="stable")] for g in groups]
    batches = [g[i:i + batch_size] for g in groups for i in range(0, len(g), batch_size)]
    if batches:
        top = max(range(len(batches)), key=lambda b: lengths[batches[b]].max())
        batches[0], batches[top] = batches[top], batches[0]
    return [int(i) for b in batches for i in b]


class LengthGroupedSampler(torch.utils.data.Sampler):
    """A `Sampler` over `length_grouped_indices`; call `set_epoch` each epoch for a new order."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, mega_batch_mult: int = 50):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.mega_batch_mult = mega_batch_mult
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        seed = self.seed * 1_000_003 + self.epoch
        return iter(length_grouped_indices(self.lengths, self.batch_size, seed, self.mega_batch_mult))


def example_lengths(dataset) -> list[int]:
    """Token counts of a tokenized dataset's examples (for LengthGroupedSampler)."""
    return [len(ids) for ids in dataset["input_ids"]]
