"""What a growth rule is: the part of SpIEL's reselection that differs between methods and variants.

The Selector owns the loop (count steps; at a reselection drop each layer's weakest slots, write the grown
positions into the freed slots, reset their optimizer state, keep indices sorted). A rule owns everything its
scores need: statistics gathered between reselections, probes on the layers, how grown slots' optimizer
state is seeded, and its part of the selector's state_dict.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spiel.delta.layer import SparseDeltaLinear
from spiel.selection.schedule import ReselectionSchedule

# SpIEL-AG's Adam seeding of grown entries (see rules/accumulated_gradient.py); the first is the default
ADAM_SEEDINGS = ("full", "released", "none")


@dataclass(frozen=True)
class GrowthSettings:
    """The knobs of the growth variants (each rule reads the ones it uses).

    ``cap``: ``capped`` lets no row hold more than ``cap`` times its mean share of entries (``k / out``,
    rounded up) and no column more than ``cap · k / in``. ``explore_share``: ``explore`` grows this share
    of each reselection's entries uniformly at random among the inactive positions. ``seed``: the random
    draws (the same on every rank, so data-parallel replicas agree). ``adam_seeding``: how SpIEL-AG's rules
    seed the Adam state of the entries they grow by gradient (``rules/accumulated_gradient.py``)."""

    cap: float = 4.0
    explore_share: float = 0.25
    seed: int = 0
    adam_seeding: str = "full"

    def __post_init__(self):
        if not self.cap >= 1:
            raise ValueError(f"growth_cap must be >= 1 (a multiple of the mean entries per row/column), got {self.cap}")
        if not 0 <= self.explore_share <= 1:
            raise ValueError(f"explore_share must be in [0, 1], got {self.explore_share}")
        if self.adam_seeding not in ADAM_SEEDINGS:
            raise ValueError(f"adam_seeding must be one of {ADAM_SEEDINGS}, got {self.adam_seeding!r}")


class GrowthRule:
    """Base class: grows nothing and keeps no state. Subclasses override what they need."""

    #: False: the selector never reselects (static sparsity: the initial random positions stay)
    reselects = True
    #: whether the rule gathers gradients in estimation phases (SpIEL-AG's probes)
    estimates_gradients = False
    #: whether ``scored_growth`` gives scores comparable across matrices (what budget="global" ranks)
    comparable_scores = False

    def __init__(self, layers: dict[str, SparseDeltaLinear], optimizer, schedule: ReselectionSchedule,
                 settings: GrowthSettings, process_group=None):
        self.layers = layers
        self.optimizer = optimizer
        self.schedule = schedule
        self.settings = settings
        self.group = process_group

    def after_step(self, t: int) -> None:
        """Called once optimizer step ``t`` is done, before any reselection at ``t``."""

    def prepare(self, t: int) -> None:
        """Called after step ``t``'s bookkeeping: set the layers' probes for the next step."""

    def grow(self, name: str, n: int, staying: torch.Tensor, active: torch.Tensor, t: int):
        """Up to ``n`` unique flat positions for layer ``name``, best first, none of them in ``staying`` (the
        sorted positions kept this round; ``active`` also holds the dropped ones, which a rule may regrow),
        and the optimizer state they start with: ``{key: tensor aligned with the positions, or a scalar}``."""
        return torch.zeros(0, dtype=torch.long, device=active.device), {}

    def scored_growth(self, name: str, n: int, staying: torch.Tensor, active: torch.Tensor, t: int):
        """As :meth:`grow`, with each position's score (comparable across matrices) as a third element."""
        raise NotImplementedError(f"{type(self).__name__} has no growth scores comparable across matrices")

    def before_write(self, layer: SparseDeltaLinear, seeds: dict, t: int) -> None:
        """Called just before grown positions and their ``seeds`` are written into ``layer`` at step ``t``."""

    def end_period(self) -> None:
        """Called after a reselection of every layer."""

    def close(self) -> None:
        """End of training: remove the rule's probes."""

    def state_dict(self) -> dict[str, dict]:
        """Per-layer state (the selector saves it under ``phases``)."""
        return {name: {} for name in self.layers}

    def load_state_dict(self, phases: dict[str, dict]) -> None:
        pass


def growth_generator(seed: int, t: int, ordinal: int, device) -> torch.Generator:
    """The random draws of one layer (the ``ordinal``-th) at the reselection of step ``t``: fixed by seed, step
    and layer, so every rank of a data-parallel run draws the same."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + t * 7_919 + ordinal) % (1 << 63))
