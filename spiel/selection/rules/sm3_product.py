"""SpIEL-MA's growth: the inactive positions with the largest SM3 score ``row_acc[r] · col_acc[c]``.

The accumulators live in SparseSM3 (indexed by position, so they survive drop and regrowth); the rule keeps
no state of its own and grown slots start with SparseSM3's defaults (zero momentum)."""

from __future__ import annotations

import torch

from spiel.selection.batched import ma_grow_rows
from spiel.selection.grow import ma_grow_indices
from spiel.selection.rules.base import GrowthRule


class SM3Product(GrowthRule):
    """The paper's SpIEL-MA growth. Paired with SparseSM3."""

    def grow(self, name, n, staying, active, t):
        row_acc, col_acc = self.optimizer.accumulators(self.layers[name].values)
        # Every active position is excluded, the dropped ones too: a weight is not regrown in the
        # round that drops it (its row/col statistics would just pick it again).
        return ma_grow_indices(row_acc, col_acc, active, n), {}

    def grow_rows(self, names, n, staying, active, t):
        accumulators = [self.optimizer.accumulators(self.layers[name].values) for name in names]
        row_acc = torch.stack([row for row, _ in accumulators])
        col_acc = torch.stack([col for _, col in accumulators])
        found = ma_grow_rows(row_acc, col_acc, active, n)
        if found is None:
            return None
        grown, ok = found
        valid = torch.ones(grown.shape, dtype=torch.bool, device=grown.device)
        for i in (i for i, good in enumerate(ok) if not good):  # a sample far off: the rule's own fallback
            alone = ma_grow_indices(row_acc[i], col_acc[i], active[i], n)
            grown[i, : alone.numel()] = alone
            valid[i, alone.numel() :] = False
        return grown, valid, {}
