"""The benchmark registry: what spiel-eval, data preparation and result collection know of each benchmark.

A benchmark is one module ``spiel/eval/<name>.py`` that defines ``BENCHMARK`` (a :class:`Benchmark`) and one
config ``configs/bench/<name>.yaml`` whose defaults list names its typed schema (``/schema/bench/<name>``,
registered in Hydra's ConfigStore by :func:`register_bench_schemas`). The registry is read from the
YAML files, so adding a benchmark is those two files.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import import_module
from pathlib import Path
from typing import Optional

from spiel.paths import CONFIG_DIR

BENCH_CONFIG_DIR = CONFIG_DIR / "bench"
MISSING = "???"  # omegaconf.MISSING: every value comes from the benchmark's YAML


@dataclass
class BenchConfig:
    """The keys every benchmark config has; each benchmark's schema extends it with its own, typed."""

    name: str = MISSING
    batch_size: Optional[int] = None  # null = eval.batch_size


def copy_files(name: str, files: list[Path], data_dir: Path) -> None:
    """The default layout: the fetched files as they are, in ``data_dir/<name>/``."""
    folder = Path(data_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(f, folder / Path(f).name)


@dataclass(frozen=True)
class Benchmark:
    """One benchmark. ``evaluate(model, tokenizer, bench, data_dir, batch_size=, seed=, limit=, progress=)``
    returns ``{"metrics", "predictions"}`` (``bench``: its config as a dict). ``headline``: the path of the
    number a results table shows in ``metrics.json``, and its factor to percent."""

    name: str
    config: type  # its BenchConfig subclass
    evaluate: Callable[..., dict]
    headline: tuple[tuple[str, ...], float]
    title: str  # its column in results tables
    column: Optional[int] = None  # its place in results tables (None: not shown)
    in_average: bool = False  # one of the paper's five, averaged in the tables' "Avg."
    check_settings: Optional[Callable[[dict], None]] = None  # before the model loads (no data read)
    check_data: Optional[Callable[..., None]] = (
        None  # (bench, data_dir, seed, limit): read and check the data
    )
    layout: str = (
        ""  # what it reads under eval.data_dir ("": nothing, its data ships with spiel or a package)
    )
    sources: tuple[tuple[str, str], ...] = ()  # (url, file name) that prepare_eval_data fetches
    lay_out: Optional[Callable[[list[Path], Path], None]] = (
        None  # (fetched files, data_dir); None: copy_files
    )
    verify: Optional[Callable[[Path], list[str]]] = None  # problems with the data laid out under data_dir

    def headline_value(self, metrics: dict) -> float | None:
        keys, factor = self.headline
        value = metrics
        for k in keys:
            if not isinstance(value, dict) or k not in value:
                return None
            value = value[k]
        return float(value) * factor


@cache
def benchmarks() -> dict[str, Benchmark]:
    """Every benchmark, by name (the YAML files of configs/bench/), in results-table order."""
    found = {}
    for path in sorted(BENCH_CONFIG_DIR.glob("*.yaml")):
        bench = import_module(f"spiel.eval.{path.stem}").BENCHMARK
        if bench.name != path.stem:
            raise ValueError(f"{path}: spiel.eval.{path.stem}.BENCHMARK is named {bench.name!r}")
        found[bench.name] = bench
    return dict(sorted(found.items(), key=lambda item: (item[1].column is None, item[1].column or 0)))


def get_benchmark(name: str) -> Benchmark:
    known = benchmarks()
    if name not in known:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {tuple(known)}")
    return known[name]


def register_bench_schemas() -> None:
    """Each benchmark's typed config as ``schema/bench/<name>`` in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, bench in benchmarks().items():
        store.store(group="schema/bench", name=name, node=bench.config)
