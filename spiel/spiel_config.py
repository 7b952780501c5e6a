"""The SpIEL knobs, declared once, and SpielConfig: what to tune and how SpIEL reselects.

:class:`SpielKnobs` is the one declaration of every SpIEL setting (its type, default and help text). The
library config (:class:`SpielConfig`), spiel-train's Hydra schema (``spiel.training.config.schema.SpielMethodConfig``)
and the benchmarks all inherit these fields, and :meth:`SpielKnobs.check_knobs` is their one validation: a bad
value raises :class:`SpielConfigError`, whose ``field`` names the knob (spiel-train reports it as
``method.<field>``). Validated on construction, so a bad value fails before any model is loaded.

Adding a knob: declare it in SpielKnobs with ``knob(default, "help")`` (and a check in ``check_knobs`` if
it has a range), list its default in ``configs/method/ag.yaml`` (SpIEL-MA extends that file; a test
checks the two defaults agree), and read it where it is used (``model.spiel_config.<name>``).

This module imports nothing heavy (no torch, no hydra); the choice lists are imported when checking.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

DELTA_DTYPES = ("float32", "bfloat16", "float16")  # the names in spiel.dtypes.DTYPES (which imports torch; tests/core/test_knobs.py checks they agree)
DEFAULT_RANK_EQUIV = 64  # the paper's setting
# SpIEL-AG's shipped Adam seeding of grown entries: the one place to change it (configs/method/ag.yaml does not
# repeat it; spiel-train takes it from the schema). The paper's own: full. See docs/quality.md for the evidence.
AG_DEFAULT_ADAM_SEEDING = "full"


def knob(default, help: str):
    """A SpIEL field: its default and its help text (``dataclasses.fields(SpielKnobs)[i].metadata["help"]``)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def knob_help(cls=None) -> dict[str, str]:
    """``{field: help}`` of every SpIEL knob (for docs and ``--help``-style listings)."""
    return {f.name: f.metadata["help"] for f in fields(cls or SpielKnobs) if "help" in f.metadata}


class SpielConfigError(ValueError):
    """A bad SpIEL setting. ``field`` is the knob's name (None when no single field is at fault) and
    ``problem`` the message without it, so a caller can re-key it (spiel-train: ``method.<field>``)."""

    def __init__(self, field: str | None, problem: str):
        self.field, self.problem = field, problem
        super().__init__(f"SpielConfig: {field} {problem}" if field else f"SpielConfig: {problem}")

    def __reduce__(self):  # pickled across processes (DDP, submitit) with its field
        return type(self), (self.field, self.problem)


@dataclass
class _MethodField:
    """Declared before the knobs so that SpielConfig keeps its positional order (method first)."""

    method: str = knob("ag", "ag (SpIEL-AG: accumulated-gradient growth, SparseAdamW) | ma (SpIEL-MA: SM3 growth)")


@dataclass
class SpielKnobs:
    """Every SpIEL setting, shared by SpielConfig, spiel-train's method schema and the benchmarks.
    Types are the ones OmegaConf understands (Optional[...], Any), since Hydra types its keys from them.

    To add a knob: one ``knob(default, help)`` line here (+ its range check below), its default in
    configs/method/ag.yaml, and its use."""

    rank_equiv: Optional[int] = knob(None, "budget: r·Σ(in+out) entries, LoRA rank r's parameter count "
                                           "(give one of rank_equiv | density | num_tunable; none: 64)")
    density: Optional[float] = knob(None, "budget: a fraction of all model parameters, in (0, 1]")
    num_tunable: Optional[int] = knob(None, "budget: a count of tunable entries")
    target_modules: Any = knob(None, "null: every linear layer except the output head; a list of name "
                                     "suffixes; or a regex matched against the full module name")
    reselection_steps: int = knob(20, "R: optimizer steps between reselections")
    estimation_steps: int = knob(5, "γ < R: SpIEL-AG's gradient-estimation steps before each reselection "
                                    "(unused by SpIEL-MA, but still checked)")
    schedule: str = knob("linear", "drop-rate schedule: linear (eq. 8) | cosine (eq. 11)")
    initial_rate: float = knob(0.2, "ξ: the fraction of deltas dropped and regrown at the first reselection")
    drop: str = knob("magnitude", "drop criterion: magnitude (released code) | change (Algorithm 1)")
    growth: str = knob("paper", "growth rule: paper (the method's own: AG's accumulated gradient, MA's SM3 product) "
                                "| normalized | capped | explore (SpIEL-AG variants that keep the support spread) "
                                "| random | static (SpIEL-AG baselines); see spiel.selection.rules")
    growth_cap: float = knob(4.0, "capped: the most entries a row or column may hold, as a multiple of the mean")
    explore_share: float = knob(0.25, "explore: the share of each growth drawn uniformly at random")
    adam_seeding: str = knob(AG_DEFAULT_ADAM_SEEDING, "SpIEL-AG: the Adam state of grown entries: full (moments = the estimation "
                                     "phase's mean and mean square, age γ) | released (what the released code "
                                     "effectively seeded at the paper's scale: 128 accumulation steps, a bf16 "
                                     "sample counter stopping at 256) | none (a fresh state: zero moments, age 0)")
    eps_placement: str = knob("torch", "SpIEL-AG's Adam eps: torch (√v̂ + eps, as torch.optim.AdamW) | hf (√v + eps "
                                       "before the bias correction, as HF's AdamW and the paper's runs with eps "
                                       "1e-6: method.eps_placement=hf method.eps=1e-6)")
    budget: str = knob("per_matrix", "per_matrix (the paper: each matrix keeps its k) | global (drop and growth "
                                     "compete across all matrices, the total stays; paper|normalized|capped)")
    delta_dtype: Optional[str] = knob(None, "dtype of the deltas: float32 | bfloat16 | float16; null: float32 "
                                            "(spiel-train: bfloat16 on an NF4 base, as the paper)")
    grad_path: str = knob("auto", "how the deltas' gradients are computed: auto | dense | blocked | sddmm | "
                                  "triton | triton_tiles")
    merged_storage: bool = knob(True, "keep W + Δ in a full-precision frozen base between optimizer steps "
                                      "(same results bit for bit; +1 base value per entry; faster on GPUs)")

    def check_knobs(self) -> None:
        """Raise SpielConfigError (naming the field) for the first bad value."""
        from spiel.delta.grad_paths import GRAD_PATHS
        from spiel.optim.adamw import EPS_PLACEMENTS
        from spiel.selection.drop import DROP_CRITERIA
        from spiel.selection.global_budget import BUDGETS
        from spiel.selection.methods import GROWTH_RULES
        from spiel.selection.rules.base import ADAM_SEEDINGS
        from spiel.selection.schedule import SCHEDULES

        def need(ok: bool, key: str | None, problem: str):
            if not ok:
                raise SpielConfigError(key, problem)

        budgets = [b for b in ("rank_equiv", "density", "num_tunable") if getattr(self, b) is not None]
        need(len(budgets) <= 1, None, f"give only one of rank_equiv, density, num_tunable (got {budgets})")
        need(self.rank_equiv is None or self.rank_equiv > 0, "rank_equiv", f"must be > 0, got {self.rank_equiv}")
        need(self.density is None or 0 < self.density <= 1, "density", f"must be in (0, 1], got {self.density}")
        need(self.num_tunable is None or self.num_tunable > 0, "num_tunable",
             f"must be > 0, got {self.num_tunable}")
        need(self.reselection_steps >= 1, "reselection_steps", f"must be >= 1, got {self.reselection_steps}")
        need(1 <= self.estimation_steps < self.reselection_steps, "estimation_steps",
             f"must be >= 1 and < reselection_steps ({self.reselection_steps}), got {self.estimation_steps}")
        need(self.schedule in SCHEDULES, "schedule", f"must be one of {SCHEDULES}, got {self.schedule!r}")
        need(0 <= self.initial_rate <= 1, "initial_rate", f"must be in [0, 1], got {self.initial_rate}")
        need(self.drop in DROP_CRITERIA, "drop", f"must be one of {DROP_CRITERIA}, got {self.drop!r}")
        need(self.growth in GROWTH_RULES, "growth", f"must be one of {GROWTH_RULES}, got {self.growth!r}")
        need(self.growth_cap >= 1, "growth_cap",
             f"must be >= 1 (a multiple of the mean entries per row/column), got {self.growth_cap}")
        need(0 <= self.explore_share <= 1, "explore_share", f"must be in [0, 1], got {self.explore_share}")
        need(self.adam_seeding in ADAM_SEEDINGS, "adam_seeding",
             f"must be one of {ADAM_SEEDINGS}, got {self.adam_seeding!r}")
        need(self.eps_placement in EPS_PLACEMENTS, "eps_placement",
             f"must be one of {EPS_PLACEMENTS}, got {self.eps_placement!r}")
        need(self.budget in BUDGETS, "budget", f"must be one of {BUDGETS}, got {self.budget!r}")
        need(self.delta_dtype is None or self.delta_dtype in DELTA_DTYPES, "delta_dtype",
             f"must be one of {DELTA_DTYPES}, got {self.delta_dtype!r}")
        need(self.grad_path in GRAD_PATHS, "grad_path", f"must be one of {GRAD_PATHS}, got {self.grad_path!r}")
        need(isinstance(self.merged_storage, bool), "merged_storage", f"must be true or false, got {self.merged_storage!r}")

    def check_method_knobs(self, method: str) -> None:
        """The knobs whose valid values depend on the method (the growth rules each method has)."""
        from spiel.selection.methods import method_spec

        rules = method_spec(method).growth
        if self.growth not in rules:
            raise SpielConfigError("growth", f"must be one of {tuple(rules)} for method {method!r}, "
                                             f"got {self.growth!r}")
        comparable = tuple(g for g, rule in rules.items() if rule.comparable_scores)
        if self.budget == "global" and self.growth not in comparable:
            raise SpielConfigError("budget", f"'global' ranks growth across matrices and needs comparable scores: "
                                             f"growth one of {comparable} (method {method!r}), "
                                             f"got {self.growth!r}")

    def knob_values(self) -> dict[str, Any]:
        """The SpIEL knobs of this object (whatever else its class holds)."""
        return {f.name: getattr(self, f.name) for f in fields(SpielKnobs)}


# fields are ordered by reversed MRO: _MethodField's `method` first, then the knobs, then seed and num_deltas
@dataclass
class SpielConfig(SpielKnobs, _MethodField):
    """Budget: exactly one of ``rank_equiv`` (``r·Σ(in+out)`` entries, LoRA rank r's count),
    ``density`` (fraction of all model parameters) or ``num_tunable``; none given means
    ``rank_equiv=64``. ``target_modules``: None (every linear layer except the output head), a list of
    name suffixes, or a regex matched against the full module name. ``delta_dtype`` None is float32.
    ``num_deltas`` (per-module k) is filled in by ``get_spiel_model`` and saved with checkpoints.
    ``growth``: how reselection grows (``paper``, the method's rule, is the default; SpIEL-AG also has
    ``normalized``, ``capped`` (with ``growth_cap``), ``explore`` (with ``explore_share``), and the baselines
    ``random`` and ``static``; see ``spiel.selection.rules``). ``budget``: ``per_matrix`` (the paper: each matrix
    keeps its k) or ``global`` (drop and growth compete across all matrices, the total stays; see
    ``spiel.selection.global_budget``). Every knob's help: ``spiel.spiel_config.knob_help()``."""

    seed: int = 0
    num_deltas: Optional[dict[str, int]] = None

    def __post_init__(self):
        from spiel.selection.methods import METHODS

        if self.method not in METHODS:
            raise SpielConfigError("method", f"must be one of {METHODS}, got {self.method!r}")
        self.check_knobs()
        if self.rank_equiv is None and self.density is None and self.num_tunable is None and self.num_deltas is None:
            self.rank_equiv = DEFAULT_RANK_EQUIV
        if self.delta_dtype is None:
            self.delta_dtype = "float32"
        self.check_method_knobs(self.method)
        if self.target_modules is not None and not isinstance(self.target_modules, str):
            self.target_modules = list(self.target_modules)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SpielConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpielConfigError(None, f"unknown field(s) {unknown}")
        return cls(**data)

