"""The demo benchmark (`bench=demo`): greedy answers to the held-out demo requests, exact match.

Each record of `assets/demo/heldout.jsonl` is one user request and the reference answer. The prompt is the
format the checkpoint was trained in: the Tülu chat format (`spiel.data.template.chat_prompt`:
"<|user|>\\n...\\n<|assistant|>\\n", BOS added by the tokenizer) unless the tokenizer carries a chat
template other than the Tülu one (spiel-train's final/ keeps the model's own after `data.template=model`),
which then renders the prompt with its generation prompt, tokenized without added special tokens as in
training. Generation is greedy and ends at EOS, and a prediction is correct when it equals the reference
after stripping surrounding whitespace.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from spiel.data.template import chat_prompt, jinja_chat_template
from spiel.eval.benchmark import MISSING, BenchConfig, Benchmark
from spiel.eval.data import BenchDataError
from spiel.eval.generate import generate
from spiel.paths import ASSETS_DIR

DEMO_HELDOUT = ASSETS_DIR / "demo" / "heldout.jsonl"


def load_demo(path: str | Path = DEMO_HELDOUT, limit: int | None = None) -> list[dict]:
    """Records of a demo JSONL file (the first `limit` when given); each must end with an assistant turn."""
    path = Path(path)
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                msgs = rec["messages"]
                if not isinstance(msgs, list) or not all(
                    isinstance(m, dict)
                    and isinstance(m.get("role"), str)
                    and isinstance(m.get("content"), str)
                    for m in msgs
                ):
                    raise ValueError("'messages' must be a list of {'role', 'content'} strings")
                if not msgs or msgs[-1]["role"] != "assistant":
                    raise ValueError("last message is not from the assistant")
            except (ValueError, KeyError, TypeError) as e:
                raise BenchDataError(f"{path}:{lineno}: bad demo record ({e})") from None
            records.append(rec)
            if limit is not None and len(records) >= limit:
                break
    if not records:
        raise BenchDataError(f"{path}: file is empty (no demo records)")
    return records


def skill_of(record: dict) -> str:
    """The skill a demo record exercises (the last '-' field of its id, e.g. 'demo-heldout-00003-sort')."""
    return str(record.get("id", "")).rsplit("-", 1)[-1]


def demo_prompts(records: list[dict], tokenizer) -> tuple[str, list[str], object]:
    """("tulu" | "model", the prompts, how generate() turns one into ids (None: the tokenizer, adding BOS))."""
    template = getattr(tokenizer, "chat_template", None)
    if not template or template in (jinja_chat_template(True), jinja_chat_template(False)):
        eos = tokenizer.eos_token or "</s>"
        return "tulu", [chat_prompt(r["messages"], eos_token=eos) for r in records], None
    prompts = [
        tokenizer.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True)
        for r in records
    ]
    return "model", prompts, lambda prompt: tokenizer(prompt, add_special_tokens=False)["input_ids"]


def evaluate_demo(
    model,
    tokenizer,
    path: str | Path = DEMO_HELDOUT,
    batch_size: int = 32,
    limit: int | None = None,
    max_new_tokens: int = 16,
    progress: bool = False,
) -> dict:
    """Exact match of greedy chat-format answers on a demo file.

    Returns {"exact_match", "num_examples", "per_skill": {skill: exact match}, "predictions": [{"id",
    "skill", "prompt", "prediction", "reference", "correct"}, ...]}.
    """
    records = load_demo(path, limit)
    prompt_format, prompts, encode = demo_prompts(records, tokenizer)
    outputs = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        encode=encode,
    )
    predictions, by_skill = [], {}
    for rec, prompt, out in zip(records, prompts, outputs, strict=True):
        ref = rec["messages"][-1]["content"]
        correct = out.strip() == ref.strip()
        skill = skill_of(rec)
        by_skill.setdefault(skill, []).append(correct)
        predictions.append(
            {
                "id": rec.get("id"),
                "skill": skill,
                "prompt": prompt,
                "prediction": out,
                "reference": ref,
                "correct": correct,
            }
        )
    n = len(predictions)
    return {
        "exact_match": sum(p["correct"] for p in predictions) / n if n else 0.0,
        "num_examples": n,
        "prompt_format": prompt_format,
        "per_skill": {k: sum(v) / len(v) for k, v in sorted(by_skill.items())},
        "predictions": predictions,
    }


# -- the benchmark: config and hooks (its data ships with spiel) ------------------------------------------
@dataclass
class DemoConfig(BenchConfig):
    path: Optional[str] = None  # null = the shipped assets/demo/heldout.jsonl
    max_new_tokens: int = MISSING


def _check_data(bench: dict, data_dir, seed: int, limit: int | None) -> None:
    load_demo(bench.get("path") or DEMO_HELDOUT, limit)


def _evaluate(model, tokenizer, bench: dict, data_dir, *, batch_size, seed, limit, progress) -> dict:
    out = evaluate_demo(
        model,
        tokenizer,
        bench.get("path") or DEMO_HELDOUT,
        batch_size=batch_size,
        limit=limit,
        max_new_tokens=bench["max_new_tokens"],
        progress=progress,
    )
    predictions = out.pop("predictions")
    return {"metrics": out, "predictions": predictions}


BENCHMARK = Benchmark(
    name="demo",
    config=DemoConfig,
    evaluate=_evaluate,
    headline=(("exact_match",), 100.0),
    title="Demo",
    column=6,
    check_data=_check_data,
)
