"""`bench=lm_eval`: lm-evaluation-harness tasks on the model spiel-eval loaded.

The loaded model (merged, composed, or a SpielModel / peft model kept unmerged on an NF4 base) and its
tokenizer are handed to lm-eval's `HFLM` as objects, so the harness scores exactly what the other
benchmarks score. Tasks are lm-eval task or group names; `include_path` adds directories of task YAMLs
(spiel's own, over the shipped demo data, are always included: `spiel_demo_gen`, `spiel_demo_loglik`).
Prompts are tokenized by the harness with the tokenizer's defaults (BOS added as in training); with
`apply_chat_template` the tokenizer's chat template (the Tülu one for spiel checkpoints) formats them.
Seeds are lm-eval's own defaults, so results compare with the `lm_eval` command line.

One deliberate difference in log-likelihood scoring: lm-eval moves a context's trailing whitespace into the
scored continuation (so that " Paris" is scored as a word). After a chat template's assistant header
("<|assistant|>\n") that whitespace belongs to the prompt: a chat model never learned to predict it (its
loss is masked in training), and scoring it gave a trained demo checkpoint accuracy 0 and perplexity in the
millions. So a context that ends with the assistant header keeps it, and only the answer's tokens are
scored (`ChatAwareHFLM`); every other context is split as lm-eval splits it.

    metrics.json: {"tasks": {task: {metric: value, ...}}, "groups": {...}, "headline": {...},
                   "num_examples": n, "lm_eval_version": ..., "n_shot": {...}}
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from spiel.eval.benchmark import MISSING, BenchConfig, Benchmark

log = logging.getLogger(__name__)

SPIEL_TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"


class LmEvalError(ValueError):
    """A bench=lm_eval setting that cannot be run (with what to do)."""


def _include_paths(include_path) -> list[str]:
    extra = [include_path] if isinstance(include_path, (str, Path)) else list(include_path or [])
    for path in extra:
        if not Path(path).is_dir():
            raise LmEvalError(f"bench.include_path: {path} is not a directory of lm-eval task YAMLs")
    return [str(SPIEL_TASKS_DIR), *map(str, extra)]


def task_manager(tasks, include_path=None):
    """An lm-eval TaskManager that knows every name in `tasks`; LmEvalError naming the unknown ones.

    The harness's built-in tasks (thousands of YAMLs, tens of seconds to index) are only indexed when a
    requested task is not among the local ones."""
    from spiel.extras import require

    require("lm_eval", "bench=lm_eval")
    if isinstance(tasks, str):
        tasks = [tasks]
    if not tasks or not all(isinstance(t, str) and t for t in tasks):
        raise LmEvalError(f"bench.tasks: a list of lm-eval task or group names, got {tasks!r}")
    paths = tuple(_include_paths(include_path))
    manager = _manager(paths, include_defaults=False)
    if not set(tasks) <= set(manager.all_tasks):
        manager = _manager(paths, include_defaults=True)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise LmEvalError(
            f"bench.tasks: unknown lm-eval task(s) {unknown}; `lm_eval ls tasks` lists the "
            "built-in ones, and bench.include_path=<dir> adds a directory of task YAMLs"
        )
    return list(tasks), manager


def _data_problem(error: BaseException) -> str | None:
    """The first line of a data set that could not be had (offline, or not on the Hub) in ``error``'s chain."""
    seen, depth = error, 0
    while seen is not None and depth < 20:
        if isinstance(seen, ConnectionError) or type(seen).__name__ in (
            "OfflineModeIsEnabled",
            "DatasetNotFoundError",
            "LocalEntryNotFoundError",
        ):
            return str(seen).splitlines()[0] if str(seen) else type(seen).__name__
        seen, depth = seen.__cause__ or seen.__context__, depth + 1
    return None


def data_error(tasks, error: BaseException) -> LmEvalError | None:
    """An LmEvalError naming the tasks and how to get their data, when ``error`` is a missing data set."""
    problem = _data_problem(error)
    if problem is None:
        return None
    return LmEvalError(
        f"bench.tasks: the data of lm-eval task(s) {list(tasks)} cannot be loaded: {problem}. Run the evaluation "
        "once with network access (HF_HUB_OFFLINE and HF_DATASETS_OFFLINE unset) to fill the Hugging Face "
        "datasets cache, or copy that cache (~/.cache/huggingface) from a machine that has it"
    )


def check_task_data(tasks, manager) -> None:
    """Build the tasks (lm-eval loads their data sets then), so that a data set that cannot be had is
    reported before the model loads."""
    try:
        manager.load(list(tasks))
    except Exception as e:
        error = data_error(tasks, e)
        if error is None:
            raise
        raise error from None


@functools.lru_cache(maxsize=4)
def _manager(paths: tuple[str, ...], include_defaults: bool):
    """Indexed once per process (spiel-eval checks the names before loading the model, then runs)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths), include_defaults=include_defaults)


def _metric_name(key: str) -> str:
    """lm-eval's "metric,filter" keys; the filter is dropped when it is "none"."""
    metric, _, filt = key.partition(",")
    return metric if filt in ("", "none") else key


def _clean(values: dict) -> dict:
    return {_metric_name(k): v for k, v in values.items() if k not in ("alias", "name", "sample_len")}


def _predictions(samples: dict) -> list[dict]:
    rows = []
    for task, items in samples.items():
        for s in items:
            args = s.get("arguments") or [()]
            response = s.get("filtered_resps")
            if isinstance(response, list) and len(response) == 1:
                response = response[0]  # one request per document: its text, or (loglikelihood, is_greedy)
            rows.append(
                {
                    "task": task,
                    "doc_id": s.get("doc_id"),
                    "prompt": args[0][0] if args and args[0] else None,
                    "target": s.get("target"),
                    "response": response,
                    **{m: s[m] for m in s.get("metrics", []) if m in s},
                }
            )
    return rows


def generation_headers(tokenizer) -> tuple[str, ...]:
    """The texts a chat prompt ends with before the answer: the Tülu header, and the generation prompt of
    the tokenizer's own chat template when it has one that ends in whitespace."""
    from spiel.data.template import ASSISTANT_HEADER

    headers = [ASSISTANT_HEADER]
    if getattr(tokenizer, "chat_template", None):
        user = [{"role": "user", "content": "x"}]
        try:
            plain = tokenizer.apply_chat_template(user, tokenize=False)
            prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        except Exception:  # a template that cannot render this: nothing to add
            prompt = plain = ""
        suffix = prompt[len(plain) :] if prompt.startswith(plain) else ""
        if suffix.strip() and suffix != suffix.rstrip():
            headers.append(suffix)
    return tuple(headers)


@functools.cache
def _chat_aware_class():
    from lm_eval.models.huggingface import HFLM

    class ChatAwareHFLM(HFLM):
        """HFLM that keeps a chat prompt's assistant header whole in the context (see the module doc)."""

        def __init__(self, *args, headers: tuple[str, ...] = (), **kwargs):
            super().__init__(*args, **kwargs)
            self.headers = tuple(headers)

        def _encode_pair(self, context: str, continuation: str):
            if self.backend != "causal" or not context.endswith(self.headers):
                return super()._encode_pair(context, continuation)
            whole = self.tok_encode(context + continuation)
            context_enc = self.tok_encode(context)
            return context_enc, whole[len(context_enc) :]

    return ChatAwareHFLM


def evaluate_lm_eval(
    model,
    tokenizer,
    tasks,
    include_path=None,
    num_fewshot: int | None = None,
    batch_size: int = 4,
    limit: int | None = None,
    apply_chat_template: bool = False,
    max_length: int | None = None,
    gen_kwargs: dict | None = None,
    bootstrap_iters: int = 100000,
    progress: bool = False,
) -> dict:
    """Run lm-eval `tasks` on `model`; {"metrics", "predictions"} as the other benchmarks return."""
    import lm_eval

    tasks, manager = task_manager(tasks, include_path)
    lm = _chat_aware_class()(
        pretrained=model,
        tokenizer=tokenizer,
        batch_size=batch_size,
        max_length=max_length,
        headers=generation_headers(tokenizer),
    )
    try:
        result = lm_eval.simple_evaluate(
            model=lm,
            tasks=tasks,
            task_manager=manager,
            num_fewshot=num_fewshot,
            limit=limit,
            apply_chat_template=apply_chat_template,
            gen_kwargs=gen_kwargs,
            bootstrap_iters=bootstrap_iters,
            log_samples=True,
            verbosity="INFO" if progress else "WARNING",
        )
    except Exception as e:
        error = data_error(tasks, e)
        if error is None:
            raise
        raise error from None
    if result is None:  # pragma: no cover - only non-zero ranks of a distributed run get None
        raise RuntimeError("lm-eval returned no results")
    groups = set(result.get("groups", {}))
    per_task = {t: _clean(v) for t, v in result["results"].items() if t not in groups}
    n_samples = result.get("n-samples", {})
    for task, values in per_task.items():
        values["num_examples"] = n_samples.get(task, {}).get("effective")
    first = tasks[0] if tasks[0] in per_task else next(iter(per_task))
    first_metric = next(
        (k for k in per_task[first] if not k.endswith("_stderr") and k != "num_examples"), None
    )
    metrics = {
        "tasks": per_task,
        "groups": {g: _clean(v) for g, v in result.get("groups", {}).items()},
        "headline": {"task": first, "metric": first_metric, "value": per_task[first].get(first_metric)},
        "num_examples": sum(v["num_examples"] or 0 for v in per_task.values()),
        "n_shot": result.get("n-shot", {}),
        "lm_eval_version": getattr(lm_eval, "__version__", None),
    }
    return {"metrics": metrics, "predictions": _predictions(result.get("samples", {}))}


# -- the benchmark: config and hooks ------------------------------------------------------------------------
@dataclass
class LmEvalConfig(BenchConfig):
    tasks: Any = MISSING  # lm-eval task or group names
    include_path: Any = None  # a directory (or list) of task YAMLs besides spiel's own
    num_fewshot: Optional[int] = None
    apply_chat_template: bool = MISSING
    max_length: Optional[int] = None
    gen_kwargs: Any = None
    bootstrap_iters: int = MISSING


def _check_settings(bench: dict) -> None:
    from spiel.quiet_imports import hub_offline

    tasks, manager = task_manager(bench.get("tasks"), bench.get("include_path"))
    if hub_offline() or os.environ.get("HF_DATASETS_OFFLINE", "").strip().lower() in (
        "1",
        "true",
        "yes",
        "on",
    ):
        check_task_data(tasks, manager)  # offline, a data set not in the cache fails here, not after loading


def _evaluate(model, tokenizer, bench: dict, data_dir, *, batch_size, seed, limit, progress) -> dict:
    return evaluate_lm_eval(
        model,
        tokenizer,
        bench["tasks"],
        include_path=bench.get("include_path"),
        num_fewshot=bench.get("num_fewshot"),
        batch_size=batch_size,
        limit=limit,
        apply_chat_template=bool(bench.get("apply_chat_template")),
        max_length=bench.get("max_length"),
        gen_kwargs=bench.get("gen_kwargs"),
        bootstrap_iters=bench["bootstrap_iters"],
        progress=progress,
    )


# the first task's first metric, as lm-eval reports it
BENCHMARK = Benchmark(
    name="lm_eval",
    config=LmEvalConfig,
    evaluate=_evaluate,
    headline=(("headline", "value"), 1.0),
    title="lm-eval",
    check_settings=_check_settings,
)
