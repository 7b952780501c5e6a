"""Dispatch one benchmark and write its run directory.

    run_dir/metrics.json       the reference's shape (plus num_examples)
    run_dir/predictions.jsonl  one row per item (HumanEval: per sample, with the execution result)
    run_dir/summary.txt        one line: bench, label, headline metric
    run_dir/run_info.json      what was evaluated (ckpt, base, quant, dtype, device, bench settings, versions)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from spiel.eval.data import write_jsonl

BENCHES = ("mmlu", "gsm", "bbh", "tydiqa", "humaneval", "demo", "lm_eval")
# bench -> (path into metrics.json, factor to percent)
HEADLINE = {
    "mmlu": (("average_acc",), 100.0),
    "gsm": (("exact_match",), 100.0),
    "bbh": (("average_exact_match",), 100.0),
    "tydiqa": (("average", "f1"), 1.0),
    "humaneval": (("pass@1",), 100.0),
    "demo": (("exact_match",), 100.0),
    "lm_eval": (("headline", "value"), 1.0),  # the first task's first metric, as lm-eval reports it
}


def headline(bench: str, metrics: dict) -> float | None:
    """The number a results table shows for `bench`, in percent (None when absent)."""
    if bench not in HEADLINE:
        return None
    keys, factor = HEADLINE[bench]
    value = metrics
    for k in keys:
        if not isinstance(value, dict) or k not in value:
            return None
        value = value[k]
    return float(value) * factor


def check_bench_data(name: str, bench: dict, data_dir, seed: int = 42, limit: int | None = None) -> None:
    """Read and check the data `run_bench` will score, so a bad or empty file fails (BenchDataError naming
    the file and line, or MissingDataError) before any model loads. HumanEval's problems come from its
    package and are checked by its own loader."""
    if name == "mmlu":
        from spiel.eval.mmlu import load_mmlu

        load_mmlu(data_dir, bench["ntrain"], bench["split"], bench["reader"], limit, bench.get("subjects"))
    elif name == "gsm":
        from spiel.eval.gsm import load_gsm

        load_gsm(data_dir, bench["max_num_examples"], seed)
    elif name == "bbh":
        from spiel.eval.bbh import load_cot_prompt, load_tasks

        for task in load_tasks(data_dir, bench["max_num_examples_per_task"], seed, bench.get("tasks")):
            load_cot_prompt(data_dir, task)
    elif name == "tydiqa":
        from spiel.eval.tydiqa import load_tydiqa

        load_tydiqa(data_dir, bench["n_shot"], bench["max_num_examples_per_lang"], seed)
    elif name == "demo":
        from spiel.eval.demo import DEMO_HELDOUT, load_demo

        load_demo(bench.get("path") or DEMO_HELDOUT, limit)


def run_bench(name: str, model, tokenizer, bench: dict, data_dir, batch_size: int, seed: int = 42,
              limit: int | None = None, progress: bool = False) -> dict:
    """Run benchmark `name` with the settings of its config group entry; {"metrics", "predictions"}."""
    bench = {k: v for k, v in bench.items() if k != "name"}
    bs = bench.pop("batch_size", None) or batch_size
    common = {"batch_size": bs, "limit": limit, "progress": progress}
    if name == "mmlu":
        from spiel.eval.mmlu import evaluate_mmlu

        return evaluate_mmlu(model, tokenizer, data_dir, ntrain=bench["ntrain"], split=bench["split"],
                             max_prompt_tokens=bench["max_prompt_tokens"], reader=bench["reader"],
                             subject_list=bench.get("subjects"), **common)
    if name == "gsm":
        from spiel.eval.gsm import evaluate_gsm

        return evaluate_gsm(model, tokenizer, data_dir, n_shot=bench["n_shot"],
                            max_num_examples=bench["max_num_examples"], max_new_tokens=bench["max_new_tokens"],
                            stop=bench["stop"], seed=seed, **common)
    if name == "bbh":
        from spiel.eval.bbh import evaluate_bbh

        return evaluate_bbh(model, tokenizer, data_dir, max_num_examples_per_task=bench["max_num_examples_per_task"],
                            max_new_tokens=bench["max_new_tokens"], stop=bench["stop"], seed=seed,
                            tasks=bench.get("tasks"), **common)
    if name == "tydiqa":
        from spiel.eval.tydiqa import evaluate_tydiqa

        return evaluate_tydiqa(model, tokenizer, data_dir, n_shot=bench["n_shot"],
                               max_num_examples_per_lang=bench["max_num_examples_per_lang"],
                               max_context_length=bench["max_context_length"],
                               max_new_tokens=bench["max_new_tokens"], stop=bench["stop"], seed=seed, **common)
    if name == "humaneval":
        from spiel.eval.humaneval import evaluate_humaneval
        from spiel.eval.sandbox import SandboxLimits

        box = dict(bench.get("sandbox") or {})
        n_workers = box.pop("n_workers", None)
        return evaluate_humaneval(model, tokenizer, data_file=bench.get("data_file"), n_samples=bench["n_samples"],
                                  temperature=bench["temperature"], top_p=bench["top_p"],
                                  max_new_tokens=bench["max_new_tokens"], stop=tuple(bench["stop"]), seed=seed,
                                  pass_at_k=tuple(bench["pass_at_k"]), limits=SandboxLimits(**box),
                                  n_workers=n_workers, **common)
    if name == "demo":
        from spiel.eval.demo import DEMO_HELDOUT, evaluate_demo

        out = evaluate_demo(model, tokenizer, bench.get("path") or DEMO_HELDOUT, batch_size=bs, limit=limit,
                            max_new_tokens=bench["max_new_tokens"], progress=progress)
        predictions = out.pop("predictions")
        return {"metrics": out, "predictions": predictions}
    if name == "lm_eval":
        from spiel.eval.lm_eval_backend import evaluate_lm_eval

        return evaluate_lm_eval(model, tokenizer, bench["tasks"], include_path=bench.get("include_path"),
                                num_fewshot=bench.get("num_fewshot"), batch_size=bs, limit=limit,
                                apply_chat_template=bool(bench.get("apply_chat_template")),
                                max_length=bench.get("max_length"), gen_kwargs=bench.get("gen_kwargs"),
                                bootstrap_iters=bench["bootstrap_iters"], progress=progress)
    raise ValueError(f"unknown benchmark {name!r}; choose one of {BENCHES}")


def check_bench(name: str, bench: dict) -> None:
    """Settings that can be checked before the model loads (lm-eval: the task names and include paths)."""
    if name == "lm_eval":
        from spiel.eval.lm_eval_backend import check_task_data, task_manager
        from spiel.quiet_imports import hub_offline

        tasks, manager = task_manager(bench.get("tasks"), bench.get("include_path"))
        if hub_offline() or os.environ.get("HF_DATASETS_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
            check_task_data(tasks, manager)  # offline, a data set not in the cache fails here, not after loading


def summary_line(bench: str, label: str, metrics: dict) -> str:
    keys, _ = HEADLINE.get(bench, ((), 1.0))
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
    info = dict(run_info, bench=bench, finished=time.strftime("%Y-%m-%dT%H:%M:%S"), headline=headline(bench, metrics))
    (out_dir / "run_info.json").write_text(json.dumps(info, indent=2, ensure_ascii=False, default=str) + "\n")
    line = summary_line(bench, run_info.get("label", "?"), metrics)
    (out_dir / "summary.txt").write_text(line + "\n")
    return line
