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
from pathlib import Path

import numpy as np

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


def load_tasks(data_dir, max_num_examples_per_task: int | None = 40, seed: int = 42,
               tasks: list[str] | None = None) -> dict[str, list[dict]]:
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


def evaluate_bbh(model, tokenizer, data_dir, max_num_examples_per_task: int | None = 40, max_new_tokens: int = 512,
                 stop=("\n\n",), batch_size: int = 4, seed: int = 42, tasks: list[str] | None = None,
                 limit: int | None = None, progress: bool = False) -> dict:
    all_tasks = load_tasks(data_dir, max_num_examples_per_task, seed, tasks)
    items, prompts = [], []
    for task, examples in all_tasks.items():
        task_prompt = load_cot_prompt(data_dir, task)
        for ex in examples[:limit] if limit else examples:
            items.append((task, ex))
            prompts.append(build_prompt(task_prompt, ex["input"]))
    outputs = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                       stop=list(stop) if stop else None, progress=progress)
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
