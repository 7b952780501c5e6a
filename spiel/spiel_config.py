"""The SpIEL knobs, declared once, and SpielConfig: what to tune and how SpIEL reselects.

:class:`SpielKnobs` is every SpIEL setting (type, default, help): the budget and targets (``_Budget``), the
reselection knobs (``spiel.selection.config.SelectionConfig``, which it composes) and the delta storage
(``_Storage``). The library config (:class:`SpielConfig`), spiel-train's Hydra schema
(``spiel.training.config.schema.SpielMethodConfig``) and the benchmarks all inherit these fields, and
:meth:`SpielKnobs.check_knobs` is their one validation: a bad value raises :class:`SpielConfigError`, whose
``field`` names the knob (spiel-train reports it as ``method.<field>``). Validated on construction, so a bad
value fails before any model is loaded.

Adding a knob: one ``knob(default, "help")`` line in the class it belongs to (a selection knob: in
SelectionConfig, with its check there) and the code that reads it. spiel-train's defaults are the fields'
(``configs/method/*.yaml`` hold only what differs).

This module imports nothing heavy (no torch, no hydra).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Optional

from spiel.selection.config import SPIEL_METHODS, SelectionConfig, SpielConfigError, knob, need, need_choice

__all__ = ["DELTA_DTYPES", "SpielConfig", "SpielConfigError", "SpielKnobs", "knob", "knob_help"]

DELTA_DTYPES = (
    "float32",
    "bfloat16",
    "float16",
)  # the names in spiel.dtypes.DTYPES (which imports torch; tests/core/test_knobs.py checks they agree)
DEFAULT_RANK_EQUIV = 64  # the paper's setting


def knob_help(cls=None) -> dict[str, str]:
    """``{field: help}`` of every SpIEL knob (for docs and ``--help``-style listings)."""
    return {f.name: f.metadata["help"] for f in fields(cls or SpielKnobs) if "help" in f.metadata}


@dataclass
class _MethodField:
    """Declared before the knobs so that SpielConfig keeps its positional order (method first)."""

    method: str = knob(
        "ag", "ag (SpIEL-AG: accumulated-gradient growth, SparseAdamW) | ma (SpIEL-MA: SM3 growth)"
    )


@dataclass
class _Budget:
    """How many entries, and where (the knobs before the selection's, for the saved order)."""

    rank_equiv: Optional[int] = knob(
        None,
        "budget: r·Σ(in+out) entries, LoRA rank r's parameter count "
        "(give one of rank_equiv | density | num_tunable; none: 64)",
    )
    density: Optional[float] = knob(None, "budget: a fraction of all model parameters, in (0, 1]")
    num_tunable: Optional[int] = knob(None, "budget: a count of tunable entries")
    target_modules: Any = knob(
        None,
        "null or all-linear: every linear layer except the output head; a list "
        "of name suffixes; or a regex matched against the full module name",
    )


@dataclass
class _Storage:
    """How the deltas are stored and differentiated (the knobs after the selection's)."""

    delta_dtype: Optional[str] = knob(
        None,
        "dtype of the deltas: float32 | bfloat16 | float16; null: float32 "
        "(spiel-train: bfloat16 on an NF4 base, as the paper)",
    )
    grad_path: str = knob(
        "auto",
        "how the deltas' gradients are computed: auto | dense | blocked | sddmm | triton | triton_tiles",
    )
    merged_storage: bool = knob(
        True,
        "keep W + Δ in a full-precision frozen base between optimizer steps "
        "(same results bit for bit; +1 base value per entry; faster on GPUs)",
    )


# fields in reversed MRO: _Budget's, SelectionConfig's, _Storage's (the order checkpoints were saved in)
@dataclass
class SpielKnobs(_Storage, SelectionConfig, _Budget):
    """Every SpIEL setting, shared by SpielConfig, spiel-train's method schema and the benchmarks.
    Types are the ones OmegaConf understands (Optional[...], Any), since Hydra types its keys from them."""

    def __post_init__(self):
        self.check_knobs()

    def check_knobs(self) -> None:
        """Raise SpielConfigError (naming the field) for the first bad value."""
        budgets = [b for b in ("rank_equiv", "density", "num_tunable") if getattr(self, b) is not None]
        need(len(budgets) <= 1, None, f"give only one of rank_equiv, density, num_tunable (got {budgets})")
        need(
            self.rank_equiv is None or self.rank_equiv > 0,
            "rank_equiv",
            f"must be > 0, got {self.rank_equiv}",
        )
        need(
            self.density is None or 0 < self.density <= 1, "density", f"must be in (0, 1], got {self.density}"
        )
        need(
            self.num_tunable is None or self.num_tunable > 0,
            "num_tunable",
            f"must be > 0, got {self.num_tunable}",
        )
        self.check_selection()
        if self.delta_dtype is not None:
            need_choice(self.delta_dtype, "delta_dtype", DELTA_DTYPES)
        from spiel.delta.grad_paths import GRAD_PATHS  # torch: imported when checking

        need_choice(self.grad_path, "grad_path", GRAD_PATHS)
        need(
            isinstance(self.merged_storage, bool),
            "merged_storage",
            f"must be true or false, got {self.merged_storage!r}",
        )

    def knob_values(self) -> dict[str, Any]:
        """The SpIEL knobs of this object (whatever else its class holds)."""
        return {f.name: getattr(self, f.name) for f in fields(SpielKnobs)}


# fields in reversed MRO: _MethodField's `method` first, then the knobs, then seed and num_deltas
@dataclass
class SpielConfig(SpielKnobs, _MethodField):
    """Budget: exactly one of ``rank_equiv`` (``r·Σ(in+out)`` entries, LoRA rank r's count),
    ``density`` (fraction of all model parameters) or ``num_tunable``; none given means
    ``rank_equiv=64``. ``target_modules``: None or ``"all-linear"`` (peft's spelling; every linear layer
    except the output head), a list of
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
        need_choice(self.method, "method", SPIEL_METHODS)
        self.check_knobs()
        if (
            self.rank_equiv is None
            and self.density is None
            and self.num_tunable is None
            and self.num_deltas is None
        ):
            self.rank_equiv = DEFAULT_RANK_EQUIV
        if self.delta_dtype is None:
            self.delta_dtype = "float32"
        from spiel.selection.methods import check_for_method  # torch: the rules

        check_for_method(self, self.method)
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
