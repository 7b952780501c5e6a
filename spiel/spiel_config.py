"""SpielConfig: what to tune and how SpIEL reselects. Validated on construction, so a bad value fails
before any model is loaded."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .selection.drop import DROP_CRITERIA
from .selection.methods import METHODS, method_spec
from .selection.schedule import SCHEDULES

DELTA_DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_RANK_EQUIV = 64  # the paper's setting


@dataclass
class SpielConfig:
    """Budget: exactly one of ``rank_equiv`` (``r·Σ(in+out)`` entries, LoRA rank r's count),
    ``density`` (fraction of all model parameters) or ``num_tunable``; none given means
    ``rank_equiv=64``. ``target_modules``: None (every linear layer except the output head), a list of
    name suffixes, or a regex matched against the full module name. ``num_deltas`` (per-module k) is
    filled in by ``get_spiel_model`` and saved with checkpoints.

    ``growth``: how reselection grows (``paper``, the method's rule, is the default; SpIEL-AG also has
    ``normalized``, ``capped`` (with ``growth_cap``), ``explore`` (with ``explore_share``), and the baselines
    ``random`` and ``static``; see ``spiel.selection.rules``)."""

    method: str = "ag"
    rank_equiv: int | None = None
    density: float | None = None
    num_tunable: int | None = None
    target_modules: list[str] | str | None = None
    reselection_steps: int = 20
    estimation_steps: int = 5
    schedule: str = "linear"
    initial_rate: float = 0.2
    drop: str = "magnitude"
    growth: str = "paper"
    growth_cap: float = 4.0
    explore_share: float = 0.25
    delta_dtype: str = "float32"
    grad_path: str = "auto"
    seed: int = 0
    num_deltas: dict[str, int] | None = None

    def __post_init__(self):
        from .delta.grad_paths import GRAD_PATHS

        def need(ok: bool, message: str):
            if not ok:
                raise ValueError(f"SpielConfig: {message}")

        need(self.method in METHODS, f"method must be one of {METHODS}, got {self.method!r}")
        budgets = [b for b in ("rank_equiv", "density", "num_tunable") if getattr(self, b) is not None]
        need(len(budgets) <= 1, f"give only one of rank_equiv, density, num_tunable (got {budgets})")
        if not budgets and self.num_deltas is None:
            self.rank_equiv = DEFAULT_RANK_EQUIV
        need(self.rank_equiv is None or self.rank_equiv > 0, f"rank_equiv must be > 0, got {self.rank_equiv}")
        need(self.density is None or 0 < self.density <= 1, f"density must be in (0, 1], got {self.density}")
        need(self.num_tunable is None or self.num_tunable > 0, f"num_tunable must be > 0, got {self.num_tunable}")
        need(self.reselection_steps >= 1, f"reselection_steps must be >= 1, got {self.reselection_steps}")
        need(1 <= self.estimation_steps < self.reselection_steps,
             f"estimation_steps must be >= 1 and < reselection_steps ({self.reselection_steps}), "
             f"got {self.estimation_steps}")
        need(self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        need(0 <= self.initial_rate <= 1, f"initial_rate must be in [0, 1], got {self.initial_rate}")
        need(self.drop in DROP_CRITERIA, f"drop must be one of {DROP_CRITERIA}, got {self.drop!r}")
        growths = tuple(method_spec(self.method).growth)
        need(self.growth in growths, f"growth must be one of {growths} for method {self.method!r}, got {self.growth!r}")
        need(self.growth_cap >= 1, f"growth_cap must be >= 1 (a multiple of the mean entries per row/column), "
             f"got {self.growth_cap}")
        need(0 <= self.explore_share <= 1, f"explore_share must be in [0, 1], got {self.explore_share}")
        need(self.delta_dtype in DELTA_DTYPES, f"delta_dtype must be one of {DELTA_DTYPES}, got {self.delta_dtype!r}")
        need(self.grad_path in GRAD_PATHS, f"grad_path must be one of {GRAD_PATHS}, got {self.grad_path!r}")
        if self.target_modules is not None and not isinstance(self.target_modules, str):
            self.target_modules = list(self.target_modules)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SpielConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"SpielConfig: unknown field(s) {unknown}")
        return cls(**data)
