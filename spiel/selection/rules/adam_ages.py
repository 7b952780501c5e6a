"""Keeping SparseAdamW's per-slot ages exact under a growth rule (for the rules paired with SparseAdamW).

SparseAdamW can derive a slot's age from the layer's ``grown_at`` (no per-slot counter) as long as the
optimizer's update count equals the selector's step count and every grown slot is seeded with one age, the
link's head start. When either would break, the layer's ages move into a per-slot tensor for good.
"""

from __future__ import annotations

import torch


def link_ages(optimizer, layers, head_start: int) -> None:
    for layer in layers.values():
        optimizer.link_ages(layer.values, layer.grown_at, head_start)


def keep_ages_exact(optimizer, layer, seed_age, t: int) -> None:
    """Unlink ``layer``'s ages if growing slots with ``seed_age`` (an int, or a per-slot tensor: always
    unlinked) at step ``t`` would make the ages derived from ``grown_at`` wrong."""
    head_start = optimizer.linked_head_start(layer.values)
    if head_start is None:
        return
    one_seed_age = not torch.is_tensor(seed_age) and int(seed_age) == head_start
    if optimizer.update_count(layer.values) != t or not one_seed_age:
        optimizer.unlink_ages(layer.values)
