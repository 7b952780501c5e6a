"""The SpIEL methods: each one's optimizer, and its growth rules (named in ``config.GROWTH_RULES``).

``growth`` names a method's rules; the first, ``paper``, is the method's default and the one that reproduces
the paper. SpIEL-AG's other rules are options that keep the support spread and baselines (see
``rules/accumulated_gradient.py`` and ``rules/random_growth.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module

from spiel.optim import SparseAdamW, SparseSM3
from spiel.selection.config import GROWTH_RULES, SPIEL_METHODS, SelectionConfig, need, need_choice
from spiel.selection.rules import GrowthRule


@dataclass(frozen=True)
class SpielMethodSpec:
    optimizer: type  # the optimizer class the method's rules seed and read
    build_optimizer: Callable  # (layers, lr=, weight_decay=, **options) -> optimizer over the layers' values
    adam_options: bool  # whether the optimizer takes Adam's betas and eps


def _adamw(layers, **options):
    return SparseAdamW([layer.values for layer in layers], **options)


def _sm3(layers, **options):
    return SparseSM3([layer.values for layer in layers], {layer.values: layer for layer in layers}, **options)


METHOD_SPECS = {
    "ag": SpielMethodSpec(SparseAdamW, _adamw, adam_options=True),
    "ma": SpielMethodSpec(SparseSM3, _sm3, adam_options=False),
}


def method_spec(method: str) -> SpielMethodSpec:
    if method not in METHOD_SPECS:
        raise ValueError(f"method must be one of {SPIEL_METHODS}, got {method!r}")
    return METHOD_SPECS[method]


def growth_rules(method: str) -> dict[str, type[GrowthRule]]:
    """The method's growth rules, name -> class, from ``config.GROWTH_RULES`` ("paper" first)."""
    method_spec(method)
    rules = {}
    for name, by_method in GROWTH_RULES.items():
        if method in by_method:
            module, _, cls = by_method[method].partition(":")
            rules[name] = getattr(import_module(f"spiel.selection.rules.{module}"), cls)
    return rules


def growth_rule(method: str, growth: str) -> type[GrowthRule]:
    rules = growth_rules(method)
    if growth not in rules:
        raise ValueError(f"growth must be one of {tuple(rules)} for method {method!r}, got {growth!r}")
    return rules[growth]


def check_for_method(config: SelectionConfig, method: str) -> None:
    """The knobs whose valid values depend on the method (raise SpielConfigError naming the field): its growth
    rules, and budget="global" only with a rule whose scores compare across matrices."""
    need_choice(method, "method", SPIEL_METHODS)
    rules = growth_rules(method)
    need(
        config.growth in rules,
        "growth",
        f"must be one of {tuple(rules)} for method {method!r}, got {config.growth!r}",
    )
    comparable = tuple(g for g, rule in rules.items() if rule.comparable_scores)
    need(
        config.budget != "global" or config.growth in comparable,
        "budget",
        f"'global' ranks growth across matrices and needs comparable scores: growth one of {comparable} "
        f"(method {method!r}), got {config.growth!r}",
    )
