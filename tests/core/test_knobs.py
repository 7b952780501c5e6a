"""The SpIEL knobs are declared once (spiel.spiel_config.SpielKnobs) and shared: the library config,
spiel-train's method schema and the YAML defaults agree, saved configs keep loading, and a bad value's
field travels as data (SpielConfigError.field, ConfigError.key), not inside the message only."""

from __future__ import annotations

import json
import pickle
from dataclasses import fields

import pytest
import yaml

from spiel.paths import CONFIG_DIR
from spiel.spiel_config import SpielConfig, SpielConfigError, SpielKnobs, knob_help
from spiel.training.config.schema import ConfigError, SpielMethodConfig

KNOBS = [f.name for f in fields(SpielKnobs)]
# spiel_config.json of a checkpoint written before the knobs moved (every field, in the old order)
OLD_SAVED = {
    "method": "ma",
    "rank_equiv": None,
    "density": None,
    "num_tunable": 120,
    "target_modules": ["q_proj"],
    "reselection_steps": 4,
    "estimation_steps": 2,
    "schedule": "cosine",
    "initial_rate": 0.1,
    "drop": "change",
    "delta_dtype": "bfloat16",
    "grad_path": "dense",
    "seed": 3,
    "num_deltas": {"model.layers.0.self_attn.q_proj": 120},
}


def test_every_knob_is_declared_once_with_help_and_shared():
    assert set(OLD_SAVED) - {"method", "seed", "num_deltas"} <= set(KNOBS)
    helps = knob_help()
    assert set(helps) == set(KNOBS) and all(len(text) > 5 for text in helps.values())
    for cls in (SpielConfig, SpielMethodConfig):
        assert issubclass(cls, SpielKnobs)
        assert {f.name: f.default for f in fields(cls) if f.name in KNOBS} == {
            f.name: f.default for f in fields(SpielKnobs)
        }, cls.__name__


def test_the_method_yaml_restates_no_knob_default():
    """The defaults live in the fields only: configs/method/*.yaml hold what differs (none, today), and the
    composed spiel-train config still carries every knob at its field's default."""
    for path in sorted((CONFIG_DIR / "method").glob("*.yaml")):
        restated = {
            k
            for k, v in yaml.safe_load(path.read_text()).items()
            if k in KNOBS and v == next(f.default for f in fields(SpielKnobs) if f.name == k)
        }
        assert not restated, f"{path.name} restates the default of {sorted(restated)}"
    ma = yaml.safe_load((CONFIG_DIR / "method" / "ma.yaml").read_text())
    assert "ag@_here_" in ma["defaults"]
    from hydra import compose, initialize_config_dir

    from spiel.training.config.hydra_config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose("train", overrides=["method=ma"])
    from spiel.selection.config import SelectionConfig  # (the default model's config sets the budget)

    assert {
        k: cfg.method[k] for k in SelectionConfig().selection_values()
    } == SelectionConfig().selection_values()


def test_spiel_config_keeps_its_public_constructor_and_saved_form():
    names = [f.name for f in fields(SpielConfig)]
    assert names[: len(KNOBS) + 1] == ["method", *KNOBS] and names[-2:] == ["seed", "num_deltas"]
    assert [n for n in names if n in OLD_SAVED] == list(
        OLD_SAVED
    )  # the order as before (new knobs go between)
    positional = SpielConfig("ma", None, None, 120)
    assert (positional.method, positional.num_tunable, positional.rank_equiv) == ("ma", 120, None)
    config = SpielConfig.from_dict(json.loads(json.dumps(OLD_SAVED)))  # an old checkpoint's config
    saved = config.to_dict()
    assert {k: saved[k] for k in OLD_SAVED} == OLD_SAVED
    assert {k: v for k, v in saved.items() if k not in OLD_SAVED} == {  # later knobs: their defaults
        f.name: f.default for f in fields(SpielKnobs) if f.name not in OLD_SAVED
    }
    default = SpielConfig()
    assert (default.rank_equiv, default.delta_dtype, default.method) == (64, "float32", "ag")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['rigl'\]"):
        SpielConfig.from_dict({**OLD_SAVED, "rigl": 1})


@pytest.mark.parametrize(
    "knob,bad",
    [
        ("density", 1.5),
        ("rank_equiv", 0),
        ("num_tunable", -1),
        ("reselection_steps", 0),
        ("estimation_steps", 20),
        ("schedule", "exponential"),
        ("initial_rate", 2.0),
        ("drop", "random"),
        ("delta_dtype", "int8"),
        ("grad_path", "cuda"),
        ("adam_seeding", "half"),
        ("eps_placement", "before"),
    ],
)
def test_a_bad_knob_names_its_field_as_data(knob, bad):
    with pytest.raises(SpielConfigError) as library:
        SpielConfig(**{"rank_equiv": None, knob: bad})
    assert (
        library.value.field == knob and str(library.value) == f"SpielConfig: {knob} {library.value.problem}"
    )
    with pytest.raises(ConfigError) as training:
        SpielMethodConfig(name="ag", lr=1e-4, **{"rank_equiv": None, knob: bad})
    assert training.value.key == f"method.{knob}"
    assert str(training.value) == f"method.{knob}: {library.value.problem}"


def test_the_field_survives_pickling():
    """Errors cross process boundaries (DDP ranks, submitit jobs) pickled; the field must come along."""
    for error in (
        SpielConfigError("density", "must be in (0, 1], got 2"),
        ConfigError("method.r: bad", key="method.r"),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
        assert (getattr(copy, "field", None), getattr(copy, "key", None)) == (
            getattr(error, "field", None),
            getattr(error, "key", None),
        )


def test_errors_without_one_field_are_keyed_to_the_method():
    with pytest.raises(SpielConfigError) as library:
        SpielConfig(rank_equiv=8, density=0.1)
    assert library.value.field is None and "give only one of" in str(library.value)
    with pytest.raises(ConfigError) as training:
        SpielMethodConfig(name="ma", lr=1e-3, rank_equiv=8, density=0.1)
    assert training.value.key == "method" and str(training.value).startswith("method: give only one of")
    with pytest.raises(SpielConfigError) as method:
        SpielConfig(method="rigl")
    assert method.value.field == "method"
    with pytest.raises(ConfigError) as name:
        SpielMethodConfig(name="rigl", lr=1e-3)
    assert name.value.key == "method.name"


def test_the_schema_builds_the_library_config_from_every_knob():
    m = SpielMethodConfig(name="ma", lr=1e-3, **{k: v for k, v in OLD_SAVED.items() if k in KNOBS})
    built = m.spiel_config(seed=3).to_dict()
    assert {k: built[k] for k in OLD_SAVED} == {**OLD_SAVED, "num_deltas": None}
    m.delta_dtype = None  # null: float32, bfloat16 on an NF4 base
    assert (
        m.spiel_config().delta_dtype == "float32" and m.spiel_config(quantized=True).delta_dtype == "bfloat16"
    )


def test_the_delta_dtype_names_are_the_dtype_map_s():
    """spiel_config spells the names out (it must not import torch); they must be the ones spiel.dtypes maps."""
    from spiel.dtypes import DTYPES
    from spiel.spiel_config import DELTA_DTYPES

    assert set(DELTA_DTYPES) == set(DTYPES)


def test_the_torch_free_names_are_the_method_and_rule_tables():
    """SelectionConfig names the SpIEL methods and growth rules without torch; they must be the tables'."""
    from spiel.selection import rules
    from spiel.selection.config import GROWTH_RULES, SPIEL_METHODS
    from spiel.selection.methods import METHOD_SPECS, growth_rules

    assert tuple(SPIEL_METHODS) == tuple(METHOD_SPECS)
    assert all(list(growth_rules(m))[0] == "paper" for m in SPIEL_METHODS)
    named = {cls for m in SPIEL_METHODS for cls in growth_rules(m).values()}
    assert all(issubclass(cls, rules.GrowthRule) for cls in named)
    assert {getattr(rules, name) for name in rules.__all__} - {rules.GrowthRule} <= named
    assert sum(len(by_method) for by_method in GROWTH_RULES.values()) == len(named)
    from spiel.optim.adamw import EPS_PLACEMENTS
    from spiel.selection.config import EPS_PLACEMENTS as KNOB_EPS_PLACEMENTS

    assert KNOB_EPS_PLACEMENTS == EPS_PLACEMENTS
