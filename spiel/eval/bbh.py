"""BIG-Bench Hard, 3-shot chain of thought, 40 examples per task (open-instruct's protocol).

- Data: `bbh/bbh/{task}.json` ({"examples": [{"input", "target"}]}) and `bbh/cot-prompts/{task}.txt`, whose
  first two lines (canary, "-----") are dropped; the rest is the task description and 3 CoT exemplars.
- Sampling: one `random.Random(42)` stream, `sample(examples, 40)` per task in SORTED task order. (The
  reference iterated `glob.glob` order, which depends on the filesystem; sorting makes it reproducible.)
- Prompt (no chat template): task_prompt.strip() + "\\n\\nQ: " + input + "\\nA:".
- Greedy, at most 512 new tokens, stop at "\\n\\n". (The reference's HF path meant to stop there too, but
  its stop sequence was wrapped in one list too many and never matched, so generations ran to 512 tokens
  or EOS; here the stop fires. Only the text after the first answer is affected.)
- Prediction: group 1 of the first match of r"[t|T]he answer is (.*?)\\." stripped, else the output up to
  the first blank line, stripped (the paper's code, sft-llm).
- Metric: exact match ignoring case and punctuation per task (0-1); `average_exact_match` is the
  unweighted mean over tasks.
"""

from __future__ import annotations

import random
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from spiel.eval.benchmark import MISSING, BenchConfig, Benchmark
from spiel.eval.data import BenchDataError, no_items, read_json, require
from spiel.eval.generate import generate
from spiel.eval.metrics import exact_match

_ANSWER = re.compile(r"[t|T]he answer is (.*?)\.")


def task_names(data_dir) -> list[str]:
    folder = require(Path(data_dir) / "bbh" / "bbh", "bbh", data_dir)
    names = sorted(p.stem for p in folder.glob("*.json"))
    if not names:
        raise FileNotFoundError(f"bbh: no task files (*.json) in {folder}")
    return names


def read_examples(path: Path) -> list[dict]:
    """A task file's examples, each with an "input" and a "target" string."""
    data = read_json(path, "bbh")
    examples = data.get("examples") if isinstance(data, dict) else None
    if not isinstance(examples, list) or not examples:
        raise BenchDataError(f"{path}: expected an object with a non-empty 'examples' list")
    for i, ex in enumerate(examples):
        for key in ("input", "target"):
            if not isinstance(ex, dict) or not isinstance(ex.get(key), str):
                raise BenchDataError(f"{path}: examples[{i}] has no {key!r} string")
    return examples


def load_tasks(
    data_dir, max_num_examples_per_task: int | None = 40, seed: int = 42, tasks: list[str] | None = None
) -> dict[str, list[dict]]:
    """{task: examples} in sorted task order; the per-task draws share one RNG stream over ALL tasks, so a
    task's sample does not depend on which subset of tasks is asked for."""
    rng = random.Random(seed)
    out = {}
    for name in task_names(data_dir):
        path = Path(data_dir) / "bbh" / "bbh" / f"{name}.json"
        examples = read_examples(path)
        if max_num_examples_per_task and len(examples) > max_num_examples_per_task:
            examples = rng.sample(examples, max_num_examples_per_task)
        if tasks is None or name in tasks:
            out[name] = examples
    if tasks is not None and set(tasks) - set(out):
        raise ValueError(f"bbh: unknown task(s) {sorted(set(tasks) - set(out))}")
    if not out:
        raise no_items("bbh", f"the task selection {tasks}")
    return out


def load_cot_prompt(data_dir, task: str) -> str:
    path = require(Path(data_dir) / "bbh" / "cot-prompts" / f"{task}.txt", "bbh", data_dir)
    with open(path, encoding="utf-8") as f:
        prompt = "".join(f.readlines()[2:])
    if not prompt.strip():
        raise BenchDataError(f"{path}: no prompt after the first two lines (canary, '-----')")
    return prompt


def build_prompt(task_prompt: str, question: str) -> str:
    return task_prompt.strip() + "\n\nQ: " + question + "\nA:"


def extract_answer(output: str) -> str:
    match = _ANSWER.search(output)
    if match:
        return match.group(1).strip()
    return output.split("\n\n")[0].strip()


def evaluate_bbh(
    model,
    tokenizer,
    data_dir,
    max_num_examples_per_task: int | None = 40,
    max_new_tokens: int = 512,
    stop=("\n\n",),
    batch_size: int = 4,
    seed: int = 42,
    tasks: list[str] | None = None,
    limit: int | None = None,
    progress: bool = False,
) -> dict:
    all_tasks = load_tasks(data_dir, max_num_examples_per_task, seed, tasks)
    items, prompts = [], []
    for task, examples in all_tasks.items():
        task_prompt = load_cot_prompt(data_dir, task)
        for ex in examples[:limit] if limit else examples:
            items.append((task, ex))
            prompts.append(build_prompt(task_prompt, ex["input"]))
    outputs = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        stop=list(stop) if stop else None,
        progress=progress,
    )
    by_task: dict[str, tuple[list, list]] = {}
    predictions = []
    for (task, ex), out in zip(items, outputs, strict=True):
        pred = extract_answer(out)
        by_task.setdefault(task, ([], []))
        by_task[task][0].append(pred)
        by_task[task][1].append(ex["target"])
        predictions.append({"task": task, **ex, "raw_output": out, "prediction": pred})
    metrics = {task: exact_match(p, t) for task, (p, t) in by_task.items()}
    metrics["average_exact_match"] = float(np.mean(list(metrics.values()))) if metrics else 0.0
    metrics["num_examples"] = len(items)
    return {"metrics": metrics, "predictions": predictions}


# -- the benchmark: config, data layout and sources, hooks ------------------------------------------------
EXPECTED_TASKS = 27


@dataclass
class BbhConfig(BenchConfig):
    max_num_examples_per_task: Optional[int] = MISSING
    max_new_tokens: int = MISSING
    stop: list[str] = MISSING
    tasks: Optional[list[str]] = None


def _check_data(bench: dict, data_dir, seed: int, limit: int | None) -> None:
    for task in load_tasks(data_dir, bench["max_num_examples_per_task"], seed, bench.get("tasks")):
        load_cot_prompt(data_dir, task)


def _evaluate(model, tokenizer, bench: dict, data_dir, *, batch_size, seed, limit, progress) -> dict:
    return evaluate_bbh(
        model,
        tokenizer,
        data_dir,
        max_num_examples_per_task=bench["max_num_examples_per_task"],
        max_new_tokens=bench["max_new_tokens"],
        stop=bench["stop"],
        seed=seed,
        tasks=bench.get("tasks"),
        batch_size=batch_size,
        limit=limit,
        progress=progress,
    )


def lay_out(files: list[Path], data_dir: Path) -> None:
    """BIG-Bench-Hard's main.zip: its bbh/ and cot-prompts/ folders into bbh/."""
    out = Path(data_dir) / "bbh"
    with zipfile.ZipFile(files[0]) as zf:
        names = zf.namelist()
        root = Path(names[0]).parts[0]
        for name in names:
            parts = Path(name).parts
            if name.startswith("/") or ".." in parts:
                raise ValueError(f"refusing archive member outside the archive: {name}")
            if (
                len(parts) == 3
                and parts[0] == root
                and parts[1] in ("bbh", "cot-prompts")
                and not name.endswith("/")
            ):
                target = out / parts[1] / parts[2]
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(name) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)


def verify(data_dir: Path) -> list[str]:
    problems = []
    tasks = {p.stem for p in (Path(data_dir) / "bbh" / "bbh").glob("*.json")}
    prompts = {p.stem for p in (Path(data_dir) / "bbh" / "cot-prompts").glob("*.txt")}
    if len(tasks) != EXPECTED_TASKS:
        problems.append(f"bbh: {len(tasks)} tasks, expected {EXPECTED_TASKS}")
    if tasks - prompts:
        problems.append(f"bbh: no CoT prompt for {sorted(tasks - prompts)[:3]}")
    return problems


BENCHMARK = Benchmark(
    name="bbh",
    config=BbhConfig,
    evaluate=_evaluate,
    headline=(("average_exact_match",), 100.0),
    title="BBH",
    column=3,
    in_average=True,
    check_data=_check_data,
    layout="bbh/bbh/<task>.json and bbh/cot-prompts/<task>.txt (BIG-Bench-Hard)",
    sources=(
        (
            "https://github.com/suzgunmirac/BIG-Bench-Hard/archive/refs/heads/main.zip",
            "BIG-Bench-Hard-main.zip",
        ),
    ),
    lay_out=lay_out,
    verify=verify,
)
