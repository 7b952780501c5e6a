"""GSM8K, 8-shot chain of thought on 200 test problems (open-instruct's protocol).

- Data: `gsm/test.jsonl` ({"question", "answer"}); gold = the text after "####", stripped, with thousands
  commas removed. 200 problems drawn with `random.Random(42).sample` (= `random.seed(42)` then
  `random.sample`, the reference's draw).
- Prompt (no chat template): "Answer the following questions.\\n\\n" + the 8 exemplars of Wei et al. (2022,
  Table 20), each "Question: {q}\\nAnswer: {chain of thought} So the answer is N.", joined by "\\n\\n", then
  "\\n\\nQuestion: {q}\\nAnswer:".
- Greedy, at most 512 new tokens, stop at "\\n".
- Prediction: thousands commas removed, then the LAST match of r"[-+]?\\d*\\.\\d+|\\d+" (the reference's regex:
  a sign is kept only on decimals), or the whole output when there is no number.
- Metric: exact match ignoring case and punctuation (so "18.0" != "18"), a fraction in [0, 1].
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from spiel.eval.benchmark import MISSING, BenchConfig, Benchmark
from spiel.eval.data import BenchDataError, numbered_jsonl, require
from spiel.eval.generate import generate
from spiel.eval.metrics import exact_match

# Wei et al. (2022), "Chain-of-thought prompting elicits reasoning in large language models", Table 20.
EXEMPLARS = [
    {
        "question": "There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they "
        "are done, there will be 21 trees. How many trees did the grove workers plant today?",
        "cot_answer": "There are 15 trees originally. Then there were 21 trees after some more were planted. So "
        "there must have been 21 - 15 = 6. So the answer is 6.",
        "short_answer": "6",
    },
    {
        "question": "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the "
        "parking lot?",
        "cot_answer": "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. So the answer is 5.",
        "short_answer": "5",
    },
    {
        "question": "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have "
        "left in total?",
        "cot_answer": "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. "
        "After eating 35, they had 74 - 35 = 39. So the answer is 39.",
        "short_answer": "39",
    },
    {
        "question": "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many "
        "lollipops did Jason give to Denny?",
        "cot_answer": "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny "
        "20 - 12 = 8. So the answer is 8.",
        "short_answer": "8",
    },
    {
        "question": "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys "
        "does he have now?",
        "cot_answer": "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more "
        "toys. 5 + 4 = 9. So the answer is 9.",
        "short_answer": "9",
    },
    {
        "question": "There were nine computers in the server room. Five more computers were installed each day, "
        "from monday to thursday. How many computers are now in the server room?",
        "cot_answer": "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 "
        "= 20 computers were added. 9 + 20 is 29. So the answer is 29.",
        "short_answer": "29",
    },
    {
        "question": "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. "
        "How many golf balls did he have at the end of wednesday?",
        "cot_answer": "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After "
        "losing 2 more, he had 35 - 2 = 33 golf balls. So the answer is 33.",
        "short_answer": "33",
    },
    {
        "question": "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
        "cot_answer": "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has "
        "23 - 15 dollars left. 23 - 15 is 8. So the answer is 8.",
        "short_answer": "8",
    },
]

_THOUSANDS = re.compile(r"(\d),(\d)")
_NUMBER = re.compile(r"[-+]?\d*\.\d+|\d+")
_GOLD = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)")  # a gold answer must be a number


def gold_answer(answer_field: str) -> str:
    return _THOUSANDS.sub(r"\1\2", answer_field.split("####")[1].strip())


def load_gsm(data_dir, max_num_examples: int | None = 200, seed: int = 42) -> list[dict]:
    path = require(Path(data_dir) / "gsm" / "test.jsonl", "gsm", data_dir)
    rows = []
    for lineno, r in numbered_jsonl(path):
        where = f"{path}:{lineno}"
        if not isinstance(r, dict) or not isinstance(r.get("question"), str) or not r["question"].strip():
            raise BenchDataError(f"{where}: no 'question' text")
        if not isinstance(r.get("answer"), str) or "####" not in r["answer"]:
            raise BenchDataError(f"{where}: 'answer' must be text ending in '#### <number>'")
        gold = gold_answer(r["answer"])
        if not _GOLD.fullmatch(gold):
            raise BenchDataError(f"{where}: the answer after '####' is {gold!r}, not a number")
        rows.append({"question": r["question"], "answer": gold})
    if not rows:
        raise BenchDataError(f"{path}: file is empty (no problems to score)")
    if max_num_examples and len(rows) > max_num_examples:
        rows = random.Random(seed).sample(rows, max_num_examples)
    return rows


def prompt_prefix(n_shot: int = 8) -> str:
    shots = [f"Question: {e['question']}\nAnswer: {e['cot_answer']}" for e in EXEMPLARS[:n_shot]]
    return "Answer the following questions.\n\n" + "\n\n".join(shots) + "\n\n"


def build_prompt(question: str, n_shot: int = 8) -> str:
    return prompt_prefix(n_shot) + "Question: " + question.strip() + "\nAnswer:"


def extract_answer(output: str) -> str:
    output = _THOUSANDS.sub(r"\1\2", output)
    numbers = _NUMBER.findall(output)
    return numbers[-1] if numbers else output


def evaluate_gsm(
    model,
    tokenizer,
    data_dir,
    n_shot: int = 8,
    max_num_examples: int | None = 200,
    max_new_tokens: int = 512,
    stop=("\n",),
    batch_size: int = 4,
    seed: int = 42,
    limit: int | None = None,
    progress: bool = False,
) -> dict:
    rows = load_gsm(data_dir, max_num_examples, seed)
    rows = rows[:limit] if limit else rows
    prompts = [build_prompt(r["question"], n_shot) for r in rows]
    outputs = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        stop=list(stop) if stop else None,
        progress=progress,
    )
    preds = [extract_answer(o) for o in outputs]
    predictions = [
        {"question": r["question"], "answer": r["answer"], "model_output": o, "prediction": p}
        for r, o, p in zip(rows, outputs, preds, strict=True)
    ]
    metrics = {"exact_match": exact_match(preds, [r["answer"] for r in rows]), "num_examples": len(rows)}
    return {"metrics": metrics, "predictions": predictions}


# -- the benchmark: config, data layout and sources, hooks ------------------------------------------------
EXPECTED_PROBLEMS = 1319


@dataclass
class GsmConfig(BenchConfig):
    n_shot: int = MISSING
    max_num_examples: Optional[int] = MISSING
    max_new_tokens: int = MISSING
    stop: list[str] = MISSING


def _check_data(bench: dict, data_dir, seed: int, limit: int | None) -> None:
    load_gsm(data_dir, bench["max_num_examples"], seed)


def _evaluate(model, tokenizer, bench: dict, data_dir, *, batch_size, seed, limit, progress) -> dict:
    return evaluate_gsm(
        model,
        tokenizer,
        data_dir,
        n_shot=bench["n_shot"],
        max_num_examples=bench["max_num_examples"],
        max_new_tokens=bench["max_new_tokens"],
        stop=bench["stop"],
        seed=seed,
        batch_size=batch_size,
        limit=limit,
        progress=progress,
    )


def verify(data_dir: Path) -> list[str]:
    path = Path(data_dir) / "gsm" / "test.jsonl"
    n = sum(1 for line in path.open() if line.strip()) if path.is_file() else 0
    return [] if n == EXPECTED_PROBLEMS else [f"gsm: {path} has {n} problems, expected {EXPECTED_PROBLEMS}"]


BENCHMARK = Benchmark(
    name="gsm",
    config=GsmConfig,
    evaluate=_evaluate,
    headline=(("exact_match",), 100.0),
    title="GSM",
    column=2,
    in_average=True,
    check_data=_check_data,
    layout="gsm/test.jsonl (openai/grade-school-math)",
    sources=(
        (
            "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/test.jsonl",
            "test.jsonl",
        ),
    ),
    verify=verify,
)
