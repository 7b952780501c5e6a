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

SCHEDULES = ("linear", "cosine")


@dataclass(frozen=True)
class ReselectionSchedule:
    total_steps: int
    reselection_steps: int = 20
    estimation_steps: int = 5
    schedule: str = "linear"
    initial_rate: float = 0.2

    def __post_init__(self):
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if self.reselection_steps < 1:
            raise ValueError(f"reselection_steps must be >= 1, got {self.reselection_steps}")
        if not 1 <= self.estimation_steps < self.reselection_steps:
            raise ValueError(
                f"estimation_steps must satisfy 1 <= estimation_steps < reselection_steps "
                f"(got {self.estimation_steps} and {self.reselection_steps})"
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0.0 <= self.initial_rate <= 1.0:
            raise ValueError(f"initial_rate must be in [0, 1], got {self.initial_rate}")

    def is_reselection(self, t: int) -> bool:
        gamma, period = self.estimation_steps, self.reselection_steps
        return gamma <= t <= self.total_steps and (t - gamma) % period == 0

    def is_first_reselection(self, t: int) -> bool:
        return t == self.estimation_steps

    def in_estimation_phase(self, t: int) -> bool:
        """Whether the optimizer step after ``t`` completed steps belongs to an estimation phase."""
        period_start = t - t % self.reselection_steps
        return t % self.reselection_steps < self.estimation_steps and period_start + self.estimation_steps <= self.total_steps

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
