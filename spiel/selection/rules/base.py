"""What a growth rule is: the part of SpIEL's reselection that differs between methods and variants.

The Selector owns the loop (count steps; at a reselection drop each layer's weakest slots, write the grown
positions into the freed slots, reset their optimizer state, keep indices sorted). A rule owns everything its
scores need: statistics gathered between reselections, probes on the layers, how grown slots' optimizer
state is seeded, and its part of the selector's state_dict.
"""

from __future__ import annotations

import torch

from spiel.delta.layer import SparseDeltaLinear
from spiel.selection.config import SelectionConfig
from spiel.selection.schedule import ReselectionSchedule


class GrowthRule:
    """Base class: grows nothing and keeps no state. Subclasses override what they need."""

    #: False: the selector never reselects (static sparsity: the initial random positions stay)
    reselects = True
    #: whether the rule gathers gradients in estimation phases (SpIEL-AG's probes)
    estimates_gradients = False
    #: whether ``scored_growth`` gives scores comparable across matrices (what budget="global" ranks)
    comparable_scores = False

    def __init__(
        self,
        layers: dict[str, SparseDeltaLinear],
        optimizer,
        schedule: ReselectionSchedule,
        config: SelectionConfig,
        seed: int,
        process_group=None,
    ):
        """``config``: the knobs (each rule reads the ones it uses); ``seed``: its random draws (the same on
        every rank, so data-parallel replicas agree)."""
        self.layers = layers
        self.optimizer = optimizer
        self.schedule = schedule
        self.config = config
        self.seed = seed
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

    def grow_rows(self, names: list[str], n: int, staying: torch.Tensor, active: torch.Tensor, t: int):
        """:meth:`grow` for several layers of one shape at once (``staying`` / ``active``: their sets stacked,
        ``[L, ·]``): ``(positions [L, m], valid [L, m], seeds)`` with row i's growth ``positions[i][valid[i]]``
        (valid entries first) and seeds aligned with ``positions`` (or scalars); row for row what :meth:`grow`
        gives. None: this rule (or this state) grows one layer at a time."""
        return None

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
    and layer, so every rank of a data-parallel run draws the same (and a run resumed by a later version draws
    what it drew before: the seed is (seed·1,000,003 + t·7,919 + ordinal) mod 2**63)."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + t * 7_919 + ordinal) % (1 << 63))
