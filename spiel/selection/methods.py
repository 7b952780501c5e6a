"""The SpIEL methods: each one's optimizer and growth rules. The only place that pairs them.

``growth`` names a method's rules; the first, ``paper``, is the method's default and the one that reproduces
the paper. SpIEL-AG's other rules are options that keep the support spread and baselines (see
``rules/accumulated_gradient.py`` and ``rules/random_growth.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from spiel.optim import SparseAdamW, SparseSM3
from spiel.selection.rules import (
    AccumulatedGradient,
    CappedGradient,
    ExploringGradient,
    GrowthRule,
    NoGrowth,
    NormalizedGradient,
    RandomGrowth,
    SM3Product,
)


@dataclass(frozen=True)
class SpielMethodSpec:
    optimizer: type  # the optimizer class the method's rules seed and read
    build_optimizer: Callable  # (layers, lr=, weight_decay=, **options) -> optimizer over the layers' values
    growth: dict[str, type[GrowthRule]]  # growth name -> rule; "paper" is the default
    adam_options: bool  # whether the optimizer takes Adam's betas and eps


def _adamw(layers, **options):
    return SparseAdamW([layer.values for layer in layers], **options)


def _sm3(layers, **options):
    return SparseSM3([layer.values for layer in layers], {layer.values: layer for layer in layers}, **options)


METHOD_SPECS = {
    "ag": SpielMethodSpec(SparseAdamW, _adamw, {
        "paper": AccumulatedGradient, "normalized": NormalizedGradient, "capped": CappedGradient,
        "explore": ExploringGradient, "random": RandomGrowth, "static": NoGrowth}, adam_options=True),
    "ma": SpielMethodSpec(SparseSM3, _sm3, {"paper": SM3Product}, adam_options=False),
}
METHODS = tuple(METHOD_SPECS)
GROWTH_RULES = tuple(dict.fromkeys(g for spec in METHOD_SPECS.values() for g in spec.growth))


def method_spec(method: str) -> SpielMethodSpec:
    if method not in METHOD_SPECS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return METHOD_SPECS[method]


def growth_rule(method: str, growth: str) -> type[GrowthRule]:
    rules = method_spec(method).growth
    if growth not in rules:
        raise ValueError(f"growth must be one of {tuple(rules)} for method {method!r}, got {growth!r}")
    return rules[growth]
