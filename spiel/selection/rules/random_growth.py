"""Baselines for SpIEL-AG's growth, with SparseAdamW: ``random`` growth and ``static`` (no reselection).

``random`` grows uniformly random inactive positions (fixed by seed, step and layer, so every rank draws the
same); grown slots start a fresh Adam state (zero moments, age 0). ``static`` keeps the initial random
positions for the whole run: static random sparsity."""

from __future__ import annotations

from spiel.selection.grow import random_inactive
from spiel.selection.rules.adam_ages import keep_ages_exact, link_ages
from spiel.selection.rules.base import GrowthRule, growth_generator


class RandomGrowth(GrowthRule):
    """``random``: uniformly random inactive positions, fresh Adam state."""

    def __init__(self, layers, optimizer, schedule, config, seed, process_group=None):
        super().__init__(layers, optimizer, schedule, config, seed, process_group)
        link_ages(optimizer, layers, head_start=0)  # grown slots start at age 0

    def grow(self, name, n, staying, active, t):
        layer = self.layers[name]
        generator = growth_generator(self.seed, t, list(self.layers).index(name), active.device)
        return random_inactive(active.long(), layer.out_features * layer.in_features, n, generator), {
            "age": 0
        }

    def before_write(self, layer, seeds, t):
        keep_ages_exact(self.optimizer, layer, seeds["age"], t)


class NoGrowth(GrowthRule):
    """``static``: never reselect."""

    reselects = False

    def __init__(self, layers, optimizer, schedule, config, seed, process_group=None):
        super().__init__(layers, optimizer, schedule, config, seed, process_group)
        link_ages(optimizer, layers, head_start=0)  # no slot is ever grown: every age is the update count
