"""TyDiQA GoldP, 1-shot, 100 questions per language, passages cut at 1024 tokens (the paper's protocol).

- Data: `tydiqa/tydiqa-goldp-v1.1-dev.json` (test) and `-train.json` (shots), SQuAD-style; the language is
  the part of the question id before the first "-".
- Sampling: one `random.Random(42)` stream: first 100 dev questions per language, then `n_shot` train
  examples per language (the same shot for every question of a language). Languages are taken in the
  fixed order of the paper's code (english, arabic, bengali, finnish, indonesian, korean, russian,
  swahili, telugu), restricted to those in the dev file. (The reference's order came from an unordered
  set in some versions and a sorted list in others; this pins the paper's.)
- Passages longer than `max_context_length` tokens become decode(encode(passage)[:1024]) with the
  tokenizer's defaults, for test and shot passages alike; as in the reference, `encode` adds BOS and
  `decode` keeps it, so a cut passage starts with the literal BOS text (e.g. "<s> ...").
- The prompt's token ids follow the reference's tokenizer (`encode_prompt`): it split the text at the
  literal BOS, gave the BOS token there, and tokenized the text after it as an input of its own, to
  which LLaMA-2's tokenizer prepended "▁" (" Hello" became "▁▁Hello"). Under transformers 5 that
  tokenizer prepends "▁" only at the very start of the input, and not to text already starting with a
  space, which makes a cut passage one token shorter (nearly every Telugu and Bengali prompt has one).
- Prompt (no chat template), with the language's (instruction, passage, question, answer) template:
  instruction + "\\n\\n" + shots ("{P} {passage}\\n{Q} {question}\\n{A} {first answer}", joined by "\\n\\n")
  + "\\n\\n" + "{P} {passage}\\n{Q} {question}\\n{A}".
- Greedy, at most 50 new tokens, stop at "\\n", stripped.
- Metric: SQuAD v1.1 exact match and F1 (0-100) per language; `average` is their unweighted mean.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from spiel.eval.benchmark import MISSING, BenchConfig, Benchmark
from spiel.eval.data import BenchDataError, no_items, read_json, require
from spiel.eval.generate import generate
from spiel.eval.metrics import squad_scores

LANGUAGES = [
    "english",
    "arabic",
    "bengali",
    "finnish",
    "indonesian",
    "korean",
    "russian",
    "swahili",
    "telugu",
]

# (instruction, passage label, question label, answer label) per language.
TEMPLATES = {
    "english": (
        "Answer the following question based on the information in the given passage.",
        "Passage:",
        "Question:",
        "Answer:",
    ),
    "arabic": (
        "أجب على السؤال التالي بناءً على المعلومات في المقطع المعطى.",
        "المقطع:",
        "السؤال:",
        "الإجابة:",
    ),
    "bengali": ("প্রদত্ত অধ্যায়ের তথ্যের উপর ভিত্তি করে নিম্নলিখিত প্রশ্নের উত্তর দিন।", "অধ্যায়:", "প্রশ্ন:", "উত্তর:"),
    "finnish": (
        "Vastaa seuraavaan kysymykseen annetun kappaleen tiedon perusteella.",
        "Kappale:",
        "Kysymys:",
        "Vastaus:",
    ),
    "indonesian": (
        "Jawab pertanyaan berikut berdasarkan informasi di bagian yang diberikan.",
        "Bagian:",
        "Pertanyaan:",
        "Jawaban:",
    ),
    "korean": ("주어진 문단의 정보에 기반하여 다음 질문에 답하십시오.", "문단:", "질문:", "답변:"),
    "russian": (
        "Ответьте на следующий вопрос на основе информации в данном отрывке.",
        "Отрывок:",
        "Вопрос:",
        "Ответ:",
    ),
    "swahili": (
        "Jibu swali lifuatalo kulingana na habari kwenye kifungu kilichotolewa.",
        "Kifungu:",
        "Swali:",
        "Jibu:",
    ),
    "telugu": ("ఇచ్చిన పేరాలోని సమాచారం ఆధారంగా కింది ప్రశ్నకు సమాధానం ఇవ్వండి.", "పేరా:", "ప్రశ్న:", "సమాధానం:"),
}


def read_goldp(path: Path) -> list[dict]:
    """The questions of a SQuAD-style GoldP file, each checked: an id "<language>-...", a context, a
    question and at least one answer text; an error names the item's place in the file."""
    data = read_json(path, "tydiqa")

    def items(parent, key: str, where: str) -> list:
        value = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(value, list):
            raise BenchDataError(f"{path}: {where} has no {key!r} list")
        return value

    out = []
    for a, article in enumerate(items(data, "data", "the file")):
        for p, paragraph in enumerate(items(article, "paragraphs", f"data[{a}]")):
            where = f"data[{a}].paragraphs[{p}]"
            if not isinstance(paragraph.get("context"), str):
                raise BenchDataError(f"{path}: {where} has no 'context' string")
            for q, qa in enumerate(items(paragraph, "qas", where)):
                at = f"{where}.qas[{q}]"
                if not isinstance(qa, dict) or not isinstance(qa.get("id"), str) or "-" not in qa["id"]:
                    raise BenchDataError(f"{path}: {at} has no id of the form '<language>-...'")
                if not isinstance(qa.get("question"), str):
                    raise BenchDataError(f"{path}: {at} ({qa['id']}) has no 'question' string")
                answers = qa.get("answers")
                if not (
                    isinstance(answers, list)
                    and answers
                    and all(isinstance(x, dict) and isinstance(x.get("text"), str) for x in answers)
                ):
                    raise BenchDataError(
                        f"{path}: {at} ({qa['id']}) needs a non-empty 'answers' list of {{\"text\": ...}}"
                    )
                out.append(
                    {
                        "id": qa["id"],
                        "lang": qa["id"].split("-")[0],
                        "context": paragraph["context"],
                        "question": qa["question"],
                        "answers": answers,
                    }
                )
    return out


def load_tydiqa(data_dir, n_shot: int = 1, max_num_examples_per_lang: int | None = 100, seed: int = 42):
    """(test examples in language order, {language: shot examples}, languages)."""
    base = Path(data_dir) / "tydiqa"
    dev_path = require(base / "tydiqa-goldp-v1.1-dev.json", "tydiqa", data_dir)
    dev = read_goldp(dev_path)
    if not dev:
        raise no_items("tydiqa", dev_path)
    present = {ex["lang"] for ex in dev}
    unknown = present - set(LANGUAGES)
    if unknown:
        raise ValueError(f"tydiqa: no prompt template for language(s) {sorted(unknown)}")
    languages = [lang for lang in LANGUAGES if lang in present]
    rng = random.Random(seed)
    test = []
    for lang in languages:
        examples = [ex for ex in dev if ex["lang"] == lang]
        if max_num_examples_per_lang and len(examples) > max_num_examples_per_lang:
            examples = rng.sample(examples, max_num_examples_per_lang)
        test += examples
    shots: dict[str, list[dict]] = {lang: [] for lang in languages}
    if n_shot > 0:
        train = read_goldp(require(base / "tydiqa-goldp-v1.1-train.json", "tydiqa", data_dir))
        for ex in train:
            if ex["lang"] in shots:
                shots[ex["lang"]].append(ex)
        for lang in languages:
            if len(shots[lang]) < n_shot:
                raise ValueError(
                    f"tydiqa: {n_shot} shot(s) asked but the train file has {len(shots[lang])} "
                    f"{lang} example(s)"
                )
            shots[lang] = rng.sample(shots[lang], n_shot)
    return test, shots, languages


def truncate_context(tokenizer, context: str, max_context_length: int | None) -> str:
    if not max_context_length:
        return context
    ids = tokenizer.encode(context)
    if len(ids) <= max_context_length:
        return context
    return tokenizer.decode(ids[:max_context_length])


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """The prompt's ids as the reference's tokenizer made them: the text before the first literal BOS
    as usual (with the BOS the tokenizer adds), then at each literal BOS the BOS token and the text after
    it tokenized as an input of its own."""
    bos = tokenizer.bos_token
    first, *rest = prompt.split(bos) if bos else [prompt]
    ids = list(tokenizer(first)["input_ids"])
    lead = " " if rest and _folds_leading_space(tokenizer) else ""
    for piece in rest:
        ids += [tokenizer.bos_token_id, *tokenizer(lead + piece, add_special_tokens=False)["input_ids"]]
    return ids


def _folds_leading_space(tokenizer) -> bool:
    """Whether the "▁" this tokenizer puts at the start of an input absorbs a leading space (" a" encodes
    as "a" does: LLaMA-2's tokenizer under transformers 5), where the reference's added one regardless."""

    def encode(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    return encode("a") == encode(" a")


def build_prompt(lang: str, example: dict, shots: list[dict]) -> str:
    instruction, p, q, a = TEMPLATES[lang]
    prompt = instruction + "\n\n"
    if shots:
        prompt += (
            "\n\n".join(
                f"{p} {s['context']}\n{q} {s['question']}\n{a} {s['answers'][0]['text']}" for s in shots
            )
            + "\n\n"
        )
    return prompt + f"{p} {example['context']}\n{q} {example['question']}\n{a}"


def evaluate_tydiqa(
    model,
    tokenizer,
    data_dir,
    n_shot: int = 1,
    max_num_examples_per_lang: int | None = 100,
    max_context_length: int | None = 1024,
    max_new_tokens: int = 50,
    stop=("\n",),
    batch_size: int = 4,
    seed: int = 42,
    limit: int | None = None,
    progress: bool = False,
) -> dict:
    test, shots, languages = load_tydiqa(data_dir, n_shot, max_num_examples_per_lang, seed)
    if limit:
        test = [ex for lang in languages for ex in [e for e in test if e["lang"] == lang][:limit]]
    cut = {
        lang: [
            dict(s, context=truncate_context(tokenizer, s["context"], max_context_length))
            for s in shots[lang]
        ]
        for lang in languages
    }
    test = [dict(ex, context=truncate_context(tokenizer, ex["context"], max_context_length)) for ex in test]
    prompts = [build_prompt(ex["lang"], ex, cut[ex["lang"]]) for ex in test]
    outputs = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        stop=list(stop) if stop else None,
        progress=progress,
        encode=lambda prompt: encode_prompt(tokenizer, prompt),
    )
    preds = [o.strip() for o in outputs]
    metrics = {}
    for lang in languages:
        idx = [i for i, ex in enumerate(test) if ex["lang"] == lang]
        if idx:
            metrics[lang] = squad_scores(
                [preds[i] for i in idx], [[a["text"] for a in test[i]["answers"]] for i in idx]
            )
    langs = [k for k in metrics]
    metrics["average"] = {
        key: float(np.mean([metrics[lang][key] for lang in langs])) if langs else 0.0
        for key in ("f1", "exact_match")
    }
    metrics["num_examples"] = len(test)
    predictions = [
        {
            "id": ex["id"],
            "lang": ex["lang"],
            "question": ex["question"],
            "answers": [a["text"] for a in ex["answers"]],
            "prediction_text": p,
        }
        for ex, p in zip(test, preds, strict=True)
    ]
    return {"metrics": metrics, "predictions": predictions}


# -- the benchmark: config, data layout and sources, hooks ------------------------------------------------
EXPECTED_LANGUAGES = 9
_GOLDP = "https://storage.googleapis.com/tydiqa/v1.1/"


@dataclass
class TydiqaConfig(BenchConfig):
    n_shot: int = MISSING
    max_num_examples_per_lang: Optional[int] = MISSING
    max_context_length: Optional[int] = MISSING
    max_new_tokens: int = MISSING
    stop: list[str] = MISSING


def _check_data(bench: dict, data_dir, seed: int, limit: int | None) -> None:
    load_tydiqa(data_dir, bench["n_shot"], bench["max_num_examples_per_lang"], seed)


def _evaluate(model, tokenizer, bench: dict, data_dir, *, batch_size, seed, limit, progress) -> dict:
    return evaluate_tydiqa(
        model,
        tokenizer,
        data_dir,
        n_shot=bench["n_shot"],
        max_num_examples_per_lang=bench["max_num_examples_per_lang"],
        max_context_length=bench["max_context_length"],
        max_new_tokens=bench["max_new_tokens"],
        stop=bench["stop"],
        seed=seed,
        batch_size=batch_size,
        limit=limit,
        progress=progress,
    )


def verify(data_dir: Path) -> list[str]:
    problems = []
    for split in ("dev", "train"):
        path = Path(data_dir) / "tydiqa" / f"tydiqa-goldp-v1.1-{split}.json"
        if not path.is_file():
            problems.append(f"tydiqa: {path} missing")
            continue
        data = json.loads(path.read_text())
        langs = {qa["id"].split("-")[0] for a in data["data"] for p in a["paragraphs"] for qa in p["qas"]}
        if len(langs) != EXPECTED_LANGUAGES:
            problems.append(f"tydiqa: {path.name} has {len(langs)} languages, expected {EXPECTED_LANGUAGES}")
    return problems


BENCHMARK = Benchmark(
    name="tydiqa",
    config=TydiqaConfig,
    evaluate=_evaluate,
    headline=(("average", "f1"), 1.0),
    title="TyDiQA",
    column=4,
    in_average=True,
    check_data=_check_data,
    layout="tydiqa/tydiqa-goldp-v1.1-{dev,train}.json (TyDiQA GoldP v1.1)",
    sources=tuple(
        (_GOLDP + name, name) for name in ("tydiqa-goldp-v1.1-dev.json", "tydiqa-goldp-v1.1-train.json")
    ),
    verify=verify,
)
