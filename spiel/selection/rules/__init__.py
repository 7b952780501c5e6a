"""Growth rules: how SpIEL chooses the positions it grows (one class per rule, each owning its state)."""

from spiel.selection.rules.accumulated_gradient import (
    AccumulatedGradient,
    CappedGradient,
    ExploringGradient,
    NormalizedGradient,
)
from spiel.selection.rules.base import GrowthRule
from spiel.selection.rules.random_growth import NoGrowth, RandomGrowth
from spiel.selection.rules.sm3_product import SM3Product

__all__ = [
    "AccumulatedGradient",
    "CappedGradient",
    "ExploringGradient",
    "GrowthRule",
    "NoGrowth",
    "NormalizedGradient",
    "RandomGrowth",
    "SM3Product",
]
