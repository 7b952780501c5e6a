"""Dispatch one benchmark and write its run directory.

run_dir/metrics.json       the reference's shape (plus num_examples)
run_dir/predictions.jsonl  one row per item (HumanEval: per sample, with the execution result)
run_dir/summary.txt        one line: bench, label, headline metric
run_dir/run_info.json      what was evaluated (ckpt, base, quant, dtype, device, bench settings, versions)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from spiel.eval.benchmark import benchmarks, get_benchmark
from spiel.eval.data import write_jsonl


def headline(bench: str, metrics: dict) -> float | None:
    """The number a results table shows for `bench`, in percent (None when absent or not a benchmark)."""
    known = benchmarks()
    return known[bench].headline_value(metrics) if bench in known else None


def check_bench_data(name: str, bench: dict, data_dir, seed: int = 42, limit: int | None = None) -> None:
    """Read and check the data `run_bench` will score, so a bad or empty file fails (BenchDataError naming
    the file and line, or MissingDataError) before any model loads (benchmarks without a data check: none)."""
    check = get_benchmark(name).check_data
    if check is not None:
        check(bench, data_dir, seed, limit)


def run_bench(
    name: str,
    model,
    tokenizer,
    bench: dict,
    data_dir,
    batch_size: int,
    seed: int = 42,
    limit: int | None = None,
    progress: bool = False,
) -> dict:
    """Run benchmark `name` with the settings of its config group entry; {"metrics", "predictions"}."""
    bench = {k: v for k, v in bench.items() if k != "name"}
    batch_size = bench.pop("batch_size", None) or batch_size
    return get_benchmark(name).evaluate(
        model, tokenizer, bench, data_dir, batch_size=batch_size, seed=seed, limit=limit, progress=progress
    )


def check_bench(name: str, bench: dict) -> None:
    """Settings that can be checked before the model loads (lm-eval: the task names and include paths)."""
    check = get_benchmark(name).check_settings
    if check is not None:
        check(bench)


def summary_line(bench: str, label: str, metrics: dict) -> str:
    keys = benchmarks()[bench].headline[0] if bench in benchmarks() else ()
    value = headline(bench, metrics)
    n = metrics.get("num_examples", metrics.get("num_problems"))
    shown = "n/a" if value is None else f"{value:.2f}"
    return f"{bench} | {label} | {'.'.join(keys)} = {shown}" + (f" | {n} items" if n is not None else "")


def write_run(out_dir, bench: str, result: dict, run_info: dict) -> str:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = result["metrics"]
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    write_jsonl(out_dir / "predictions.jsonl", result["predictions"])
    info = dict(
        run_info, bench=bench, finished=time.strftime("%Y-%m-%dT%H:%M:%S"), headline=headline(bench, metrics)
    )
    (out_dir / "run_info.json").write_text(json.dumps(info, indent=2, ensure_ascii=False, default=str) + "\n")
    line = summary_line(bench, run_info.get("label", "?"), metrics)
    (out_dir / "summary.txt").write_text(line + "\n")
    return line
