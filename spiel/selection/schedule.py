"""When SpIEL reselects, and how many slots each reselection replaces.

Reselections happen after optimizer steps ``t_j = γ + j·R`` (j = 0, 1, …; while ``t_j ≤ T``). For
SpIEL-AG the γ steps before each, ``(t_j − γ, t_j]``, are the gradient-estimation phase. The number of
slots of a tensor with ``k`` entries replaced at step ``t``:

* ``linear`` (paper eq. 8): ``k`` at the first reselection (the initial random indices carry no
  information), else ``⌊ξ·(T − t)/T · k⌋``;
* ``cosine`` (paper eq. 11): ``⌊ξ/2 · (1 + cos(π·t/T)) · k⌋``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from spiel.selection.config import SelectionConfig


@dataclass(frozen=True)
class ReselectionSchedule:
    """The timing knobs of a SelectionConfig (which validated them) and the run's length. Its fields are
    what a selector state saves and compares on resume."""

    total_steps: int
    reselection_steps: int
    estimation_steps: int
    schedule: str
    initial_rate: float

    @classmethod
    def of(cls, total_steps: int, config: SelectionConfig) -> ReselectionSchedule:
        return cls(
            total_steps,
            config.reselection_steps,
            config.estimation_steps,
            config.schedule,
            config.initial_rate,
        )

    def __post_init__(self):
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        SelectionConfig(
            reselection_steps=self.reselection_steps,
            estimation_steps=self.estimation_steps,
            schedule=self.schedule,
            initial_rate=self.initial_rate,
        )  # its checks, built directly too

    def is_reselection(self, t: int) -> bool:
        gamma, period = self.estimation_steps, self.reselection_steps
        return gamma <= t <= self.total_steps and (t - gamma) % period == 0

    def is_first_reselection(self, t: int) -> bool:
        return t == self.estimation_steps

    def in_estimation_phase(self, t: int) -> bool:
        """Whether the optimizer step after ``t`` completed steps belongs to an estimation phase."""
        period_start = t - t % self.reselection_steps
        return (
            t % self.reselection_steps < self.estimation_steps
            and period_start + self.estimation_steps <= self.total_steps
        )

    def starts_phase(self, t: int) -> bool:
        """Whether a new estimation phase begins right after ``t`` completed steps."""
        return t % self.reselection_steps == 0 and self.in_estimation_phase(t)

    def num_to_replace(self, k: int, t: int) -> int:
        if self.schedule == "linear":
            if self.is_first_reselection(t):
                return k
            rate = self.initial_rate * (self.total_steps - t) / self.total_steps
        else:
            rate = self.initial_rate / 2 * (1 + math.cos(math.pi * t / self.total_steps))
        return min(k, max(0, math.floor(rate * k)))
