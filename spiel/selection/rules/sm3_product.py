"""SpIEL-MA's growth: the inactive positions with the largest SM3 score ``row_acc[r] · col_acc[c]``.

The accumulators live in SparseSM3 (indexed by position, so they survive drop and regrowth); the rule keeps
no state of its own and grown slots start with SparseSM3's defaults (zero momentum)."""

from __future__ import annotations

from spiel.selection.grow import ma_grow_indices
from spiel.selection.rules.base import GrowthRule


class SM3Product(GrowthRule):
    """The paper's SpIEL-MA growth. Paired with SparseSM3."""

    def grow(self, name, n, staying, active, t):
        row_acc, col_acc = self.optimizer.accumulators(self.layers[name].values)
        # Every active position is excluded, the dropped ones too: a weight is not regrown in the
        # round that drops it (its row/col statistics would just pick it again).
        return ma_grow_indices(row_acc, col_acc, active, n), {}
