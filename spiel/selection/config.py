"""SelectionConfig: how SpIEL reselects, declared once (type, default, help) and validated in itself.

Every reselection knob lives here with its choices beside it; ``spiel.spiel_config.SpielKnobs`` composes this
class (so spiel-train's ``method.<knob>`` keys and the library config carry the same fields), and the
:class:`~spiel.selection.selector.Selector`, the schedule and the growth rules take it whole. Adding a
selection knob: one ``knob(default, help)`` line here (a check in :meth:`check_selection` if it has a range)
and the code that reads it (``config.<name>``).

No torch here: spiel-train validates its config before anything heavy loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

SPIEL_METHODS = ("ag", "ma")  # the methods of spiel.selection.methods (a test keeps the two equal)
SCHEDULES = ("linear", "cosine")  # schedule.py
DROP_CRITERIA = ("magnitude", "change")  # drop.py
BUDGETS = ("per_matrix", "global")  # global_budget.py
ADAM_SEEDINGS = ("full", "released", "none")  # rules/accumulated_gradient.py
# SpIEL-AG's shipped Adam seeding of grown entries, the one place to change it: a fresh Adam state. It beat full
# seeding on the tiny model (held-out exact match, rank 4) and on SmolLM2-135M (held-out loss) by more than the
# seed spread (docs/quality.md); the paper's runs effectively used it too (`released` is within noise of it).
AG_DEFAULT_ADAM_SEEDING = "none"
EPS_PLACEMENTS = (
    "torch",
    "hf",
)  # spiel.optim.adamw's (spelled out: optim sits below; a test keeps them equal)

# growth name -> {method that has it: its rule, "module:Class" under spiel.selection.rules}; the first ("paper")
# is each method's default. A new growth rule: its class in rules/ and one line here.
GROWTH_RULES: dict[str, dict[str, str]] = {
    "paper": {"ag": "accumulated_gradient:AccumulatedGradient", "ma": "sm3_product:SM3Product"},
    "normalized": {"ag": "accumulated_gradient:NormalizedGradient"},
    "capped": {"ag": "accumulated_gradient:CappedGradient"},
    "explore": {"ag": "accumulated_gradient:ExploringGradient"},
    "random": {"ag": "random_growth:RandomGrowth"},
    "static": {"ag": "random_growth:NoGrowth"},
}
GROWTH_NAMES = tuple(GROWTH_RULES)


def knob(default, help: str):
    """A declared setting: its default and its help text (``dataclasses.fields(cls)[i].metadata["help"]``)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


class SpielConfigError(ValueError):
    """A bad SpIEL setting. ``field`` is the knob's name (None when no single field is at fault) and
    ``problem`` the message without it, so a caller can re-key it (spiel-train: ``method.<field>``)."""

    def __init__(self, field: str | None, problem: str):
        self.field, self.problem = field, problem
        super().__init__(f"SpielConfig: {field} {problem}" if field else f"SpielConfig: {problem}")

    def __reduce__(self):  # pickled across processes (DDP, submitit) with its field
        return type(self), (self.field, self.problem)


def need(ok: bool, key: str | None, problem: str) -> None:
    if not ok:
        raise SpielConfigError(key, problem)


def need_choice(value, key: str, choices: tuple) -> None:
    need(value in choices, key, f"must be one of {choices}, got {value!r}")


@dataclass
class SelectionConfig:
    """The reselection knobs (the selector's seed and method come from the model's config)."""

    reselection_steps: int = knob(20, "R: optimizer steps between reselections")
    estimation_steps: int = knob(
        5,
        "γ < R: SpIEL-AG's gradient-estimation steps before each reselection "
        "(unused by SpIEL-MA, but still checked)",
    )
    schedule: str = knob("linear", "drop-rate schedule: linear (eq. 8) | cosine (eq. 11)")
    initial_rate: float = knob(0.2, "ξ: the fraction of deltas dropped and regrown at the first reselection")
    drop: str = knob("magnitude", "drop criterion: magnitude (released code) | change (Algorithm 1)")
    growth: str = knob(
        "paper",
        "growth rule: paper (the method's own: AG's accumulated gradient, MA's SM3 product) "
        "| normalized | capped | explore (SpIEL-AG variants that keep the support spread) "
        "| random | static (SpIEL-AG baselines); see spiel.selection.rules",
    )
    growth_cap: float = knob(
        4.0, "capped: the most entries a row or column may hold, as a multiple of the mean"
    )
    explore_share: float = knob(0.25, "explore: the share of each growth drawn uniformly at random")
    adam_seeding: str = knob(
        AG_DEFAULT_ADAM_SEEDING,
        "SpIEL-AG: the Adam state of grown entries: full (moments = the estimation "
        "phase's mean and mean square, age γ) | released (what the released code "
        "effectively seeded at the paper's scale: 128 accumulation steps, a bf16 "
        "sample counter stopping at 256) | none (a fresh state: zero moments, age 0)",
    )
    eps_placement: str = knob(
        "torch",
        "SpIEL-AG's Adam eps: torch (√v̂ + eps, as torch.optim.AdamW) | hf (√v + eps "
        "before the bias correction, as HF's AdamW and the paper's runs with eps "
        "1e-6: method.eps_placement=hf method.eps=1e-6)",
    )
    budget: str = knob(
        "per_matrix",
        "per_matrix (the paper: each matrix keeps its k) | global (drop and growth "
        "compete across all matrices, the total stays; paper|normalized|capped)",
    )

    def __post_init__(self):
        self.check_selection()

    def check_selection(self) -> None:
        """Raise SpielConfigError (naming the field) for the first bad value."""
        need(self.reselection_steps >= 1, "reselection_steps", f"must be >= 1, got {self.reselection_steps}")
        need(
            1 <= self.estimation_steps < self.reselection_steps,
            "estimation_steps",
            f"must satisfy 1 <= estimation_steps < reselection_steps ({self.reselection_steps}), "
            f"got {self.estimation_steps}",
        )
        need_choice(self.schedule, "schedule", SCHEDULES)
        need(0 <= self.initial_rate <= 1, "initial_rate", f"must be in [0, 1], got {self.initial_rate}")
        need_choice(self.drop, "drop", DROP_CRITERIA)
        need_choice(self.growth, "growth", GROWTH_NAMES)
        need(
            self.growth_cap >= 1,
            "growth_cap",
            f"must be >= 1 (a multiple of the mean entries per row/column), got {self.growth_cap}",
        )
        need(0 <= self.explore_share <= 1, "explore_share", f"must be in [0, 1], got {self.explore_share}")
        need_choice(self.adam_seeding, "adam_seeding", ADAM_SEEDINGS)
        need_choice(self.eps_placement, "eps_placement", EPS_PLACEMENTS)
        need_choice(self.budget, "budget", BUDGETS)

    def selection_values(self) -> dict:
        """The selection knobs of this object (whatever else its class holds)."""
        return {f.name: getattr(self, f.name) for f in fields(SelectionConfig)}
