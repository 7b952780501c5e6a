"""Optimizers for sparse-delta values: SparseAdamW (SpIEL-AG) and SparseSM3 (SpIEL-MA).

Both keep fp32 state, expose ``reset_slots(param, slots, **state)`` for regrown slots and
``permute_slots(param, perm)`` so state follows re-sorted indices. Needs only torch.
"""

from spiel.optim.adamw import SparseAdamW
from spiel.optim.slot_state import SlotStateOptimizer
from spiel.optim.sm3 import SparseSM3

__all__ = ["SlotStateOptimizer", "SparseAdamW", "SparseSM3"]
