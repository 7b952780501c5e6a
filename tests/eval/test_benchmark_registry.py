"""The benchmark registry is the YAML files of configs/bench/ and one module each (spiel.eval.<name>.BENCHMARK):
every YAML key is typed by the benchmark's schema, and every caller reads the registry."""

from __future__ import annotations

from dataclasses import fields

import pytest
import yaml

from spiel.eval.benchmark import BENCH_CONFIG_DIR, BenchConfig, Benchmark, benchmarks, get_benchmark


def test_every_bench_yaml_has_its_module_and_typed_schema():
    found = benchmarks()
    assert set(found) == {p.stem for p in BENCH_CONFIG_DIR.glob("*.yaml")}
    for name, bench in found.items():
        assert isinstance(bench, Benchmark) and issubclass(bench.config, BenchConfig)
        data = yaml.safe_load((BENCH_CONFIG_DIR / f"{name}.yaml").read_text())
        assert f"/schema/bench/{name}@_here_" in str(data["defaults"][0])
        assert set(data) - {"defaults"} <= {f.name for f in fields(bench.config)}, name
    paper = [b.name for b in found.values() if b.in_average]
    assert paper == ["mmlu", "gsm", "bbh", "tydiqa", "humaneval"]  # the paper's columns, in its order


def test_a_wrong_key_type_is_refused_while_composing():
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException

    import spiel.cli.eval  # noqa: F401 (registers the schemas)
    from spiel.paths import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        assert compose("eval", overrides=["bench=gsm"]).bench.n_shot == 8
        with pytest.raises(ConfigCompositionException):
            compose("eval", overrides=["bench=gsm", "bench.n_shot=eight"])


def test_unknown_benchmark_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown benchmark 'mmlu_pro'; choose one of .*'tydiqa'"):
        get_benchmark("mmlu_pro")


def test_headline_reads_the_benchmark_s_metric_path():
    from spiel.eval.runner import headline

    assert headline("tydiqa", {"average": {"f1": 41.5}}) == 41.5
    assert headline("mmlu", {"average_acc": 0.5}) == 50.0
    # fractions shown as percent (hand-computed)
    assert headline("gsm", {"exact_match": 0.125}) == 12.5
    assert headline("bbh", {"average_exact_match": 0.375}) == 37.5
    assert headline("mmlu", {}) is None and headline("nope", {"average_acc": 1}) is None


def test_each_shown_benchmark_has_its_own_column_in_the_paper_s_order():
    columns = {name: bench.column for name, bench in benchmarks().items() if bench.column is not None}
    assert columns == {"mmlu": 1, "gsm": 2, "bbh": 3, "tydiqa": 4, "humaneval": 5, "demo": 6}
