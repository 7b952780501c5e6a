"""Growth rules: how SpIEL chooses the positions it grows (one class per rule, each owning its state)."""

from .accumulated_gradient import AccumulatedGradient, CappedGradient, ExploringGradient, NormalizedGradient
from .base import GrowthRule, GrowthSettings
from .random_growth import NoGrowth, RandomGrowth
from .sm3_product import SM3Product

__all__ = ["AccumulatedGradient", "CappedGradient", "ExploringGradient", "GrowthRule", "GrowthSettings",
           "NoGrowth", "NormalizedGradient", "RandomGrowth", "SM3Product"]
