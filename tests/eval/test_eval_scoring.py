"""Each benchmark scores known answers right: scripted model outputs with hand-computed scores.

MMLU runs a stub model whose next-token distribution puts its mass on the letter the test chooses;
the generative benchmarks (GSM, BBH, TyDiQA, demo) get scripted generations in place of `generate`.
Everything from the data files to the metrics is the real code; the expected numbers are worked out
by hand from the fixture files."""

from __future__ import annotations

import csv
import json
import random

import pytest
import torch
import torch.nn as nn

from spiel.eval import bbh, demo, gsm, mmlu, tydiqa
from spiel.testing import DEMO_DIR
from tests.helpers.paths import EVAL_FIXTURES

LETTERS = "ABCD"


class LetterOracle(nn.Module):
    """A stand-in causal LM: for each prompt it finds the last question and puts all next-token mass on
    " X", where X = choose(question)."""

    def __init__(self, tokenizer, choose):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the scorer a device
        self.tokenizer, self.choose = tokenizer, choose
        self.letter_ids = {c: tokenizer.encode(" " + c, add_special_tokens=False)[-1] for c in LETTERS}

    def forward(self, input_ids, attention_mask, **_):
        logits = torch.zeros(*input_ids.shape, len(self.tokenizer))
        for b in range(input_ids.shape[0]):
            text = self.tokenizer.decode(input_ids[b][attention_mask[b].bool()], skip_special_tokens=True)
            question = text.rsplit("\n\n", 1)[-1].split("\nA. ")[0]
            logits[b, -1, self.letter_ids[self.choose(question)]] = 20.0
        return type("Out", (), {"logits": logits})()


def mmlu_gold(subject: str) -> list[tuple[str, str]]:
    with open(EVAL_FIXTURES / "mmlu" / "test" / f"{subject}_test.csv", newline="", encoding="utf-8") as f:
        return [(row[0], row[5]) for row in csv.reader(f) if row]


@pytest.mark.parametrize("reader", ["pandas", "csv"])
def test_mmlu_scores_known_answers(tok, reader):
    # Right on the 1st and 3rd question of each subject, the next letter otherwise.
    gold = {s: mmlu_gold(s) for s in ("abstract_algebra", "high_school_geography")}
    chosen = {
        q: a if i % 2 == 0 else LETTERS[(LETTERS.index(a) + 1) % 4]
        for rows in gold.values()
        for i, (q, a) in enumerate(rows)
    }
    result = mmlu.evaluate_mmlu(
        LetterOracle(tok, chosen.__getitem__), tok, EVAL_FIXTURES, ntrain=2, reader=reader
    )
    m = result["metrics"]
    assert m["subject_acc"] == {"abstract_algebra": pytest.approx(2 / 3), "high_school_geography": 0.5}
    assert m["average_acc"] == pytest.approx(3 / 5) and m["num_examples"] == 5
    for p in result["predictions"]:
        assert p["prediction"] == chosen[p["question"]]
        assert p["correct"] == (p["prediction"] == dict(gold[p["subject"]])[p["question"]])
        assert p[f"choice{p['prediction']}_probs"] > 0.99


def scripted(outputs_for):
    """A `generate` replacement: each prompt's output is `outputs_for(prompt)`."""

    def fake_generate(model, tokenizer, prompts, **_):
        return [outputs_for(p) for p in prompts]

    return fake_generate


GSM_OUTPUTS = {  # question start -> scripted output (the gold is after '####' in the fixture)
    "Tom has 3 apples": "3 + 4 = 7. So the answer is 7.",  # gold 7: right
    "A farm sells": "That is 14,400 eggs.",  # gold 14,400: commas dropped on both sides, right
    "Sara reads": "15 * 3 = 45 pages, so 46.",  # the last number counts: wrong
    "A shirt costs": "The price is $15.00.",  # "15.00" is not "15" (the reference's quirk): wrong
    "Ben runs": "He runs 10 miles",  # right
    "There are 8 rows": "no idea",  # no number: the whole output is compared: wrong
}


def test_gsm_scores_known_answers(monkeypatch):
    def output(prompt):
        question = prompt.rsplit("Question: ", 1)[1]
        return next(v for k, v in GSM_OUTPUTS.items() if question.startswith(k))

    monkeypatch.setattr(gsm, "generate", scripted(output))
    result = gsm.evaluate_gsm(None, None, EVAL_FIXTURES, max_num_examples=None)
    assert [p["prediction"] for p in result["predictions"]] == ["7", "14400", "46", "15.00", "10", "no idea"]
    assert [p["answer"] for p in result["predictions"]] == ["7", "14400", "45", "15", "10", "72"]
    assert result["metrics"] == {"exact_match": 0.5, "num_examples": 6}


def test_gsm_defaults_are_the_protocol(tmp_path, monkeypatch):
    """With no settings given: 200 problems drawn by random.Random(42).sample (a file of exactly 200 keeps
    its order), 8 shots, at most 512 new tokens, stop at a newline, batches of 4 (open-instruct's run)."""
    (tmp_path / "gsm").mkdir()
    path = tmp_path / "gsm" / "test.jsonl"
    rows = [{"question": f"Problem {i}: how many?", "answer": f"{i} in all.\n#### {i}"} for i in range(201)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    drawn = random.Random(42).sample(range(201), 200)
    calls = []

    def fake_generate(model, tokenizer, prompts, **kwargs):
        calls.append({"shots": {p.count("Question: ") - 1 for p in prompts}, **kwargs})
        return [f"So the answer is {p.rsplit('Problem ', 1)[1].split(':')[0]}." for p in prompts]

    monkeypatch.setattr(gsm, "generate", fake_generate)
    result = gsm.evaluate_gsm(None, None, tmp_path)
    assert [p["question"] for p in result["predictions"]] == [f"Problem {i}: how many?" for i in drawn]
    assert result["metrics"] == {"exact_match": 1.0, "num_examples": 200}
    assert len(calls) == 1 and calls[0]["shots"] == {8} and calls[0]["max_new_tokens"] == 512
    assert calls[0]["batch_size"] == 4 and calls[0]["stop"] == ["\n"]
    assert [r["question"] for r in gsm.load_gsm(tmp_path)] == [f"Problem {i}: how many?" for i in drawn]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:200]))
    assert [r["answer"] for r in gsm.load_gsm(tmp_path)] == [str(i) for i in range(200)]


def test_bbh_defaults_are_the_protocol(tmp_path, monkeypatch):
    """With no settings given: 40 examples per task, drawn by one random.Random(42) stream over the tasks in
    sorted order (a task of exactly 40 keeps its order), at most 512 new tokens, stop at a blank line, batches
    of 4; ``limit`` then keeps the first that many of each task's draw."""
    sizes = {"a_task": 41, "b_task": 40}
    for task, size in sizes.items():
        examples = [{"input": f"{task} {i}", "target": str(i)} for i in range(size)]
        (tmp_path / "bbh" / "bbh").mkdir(parents=True, exist_ok=True)
        (tmp_path / "bbh" / "bbh" / f"{task}.json").write_text(json.dumps({"examples": examples}))
        (tmp_path / "bbh" / "cot-prompts").mkdir(parents=True, exist_ok=True)
        (tmp_path / "bbh" / "cot-prompts" / f"{task}.txt").write_text("canary\n-----\nSolve it.\n")
    drawn = [f"a_task {i}" for i in random.Random(42).sample(range(41), 40)]
    drawn += [f"b_task {i}" for i in range(40)]
    calls = []

    def fake_generate(model, tokenizer, prompts, **kwargs):
        calls.append(kwargs)
        return [f"So the answer is {p.rsplit(' ', 1)[1][: -len(chr(10) + 'A:')]}." for p in prompts]

    monkeypatch.setattr(bbh, "generate", fake_generate)
    result = bbh.evaluate_bbh(None, None, tmp_path)
    assert [p["input"] for p in result["predictions"]] == drawn
    assert result["metrics"] == {"a_task": 1.0, "b_task": 1.0, "average_exact_match": 1.0, "num_examples": 80}
    assert calls[0]["max_new_tokens"] == 512 and calls[0]["batch_size"] == 4 and calls[0]["stop"] == ["\n\n"]
    assert calls[0]["progress"] is False
    assert [ex["input"] for exs in bbh.load_tasks(tmp_path).values() for ex in exs] == drawn
    limited = bbh.evaluate_bbh(None, None, tmp_path, limit=3)
    assert [p["input"] for p in limited["predictions"]] == drawn[:3] + drawn[40:43]


def test_bbh_scores_known_answers(monkeypatch):
    # Per task, example i gets: i % 3 == 0 the bare target (no "the answer is": the fallback path),
    # 1 "so the answer is <target, lower case>." (right: case-blind), 2 a wrong answer.
    expected, outputs = {}, {}
    for task in ("boolean_expressions", "date_understanding"):
        examples = json.loads((EVAL_FIXTURES / "bbh" / "bbh" / f"{task}.json").read_text())["examples"]
        for i, ex in enumerate(examples):
            outputs[ex["input"]] = [
                ex["target"],
                f"so the answer is {ex['target'].lower()}.",
                "So the answer is nothing at all.",
            ][i % 3]
        expected[task] = sum(i % 3 != 2 for i in range(len(examples))) / len(examples)

    monkeypatch.setattr(
        bbh, "generate", scripted(lambda p: outputs[p.rsplit("\n\nQ: ", 1)[1][: -len("\nA:")]])
    )
    m = bbh.evaluate_bbh(None, None, EVAL_FIXTURES)["metrics"]
    assert {t: m[t] for t in expected} == pytest.approx(expected)
    assert m["average_exact_match"] == pytest.approx(sum(expected.values()) / 2)
    assert m["num_examples"] == 9


TYDIQA_OUTPUTS = {
    "What is the capital of Finland?": "Helsinki",  # EM 100, F1 100
    "Where does Helsinki lie?": "Gulf of Finland",  # the 2nd gold exactly (the 1st: F1 2/3): 100, 100
    "What is the fox named?": "Max",  # 0, 0
    "Mikä on Suomen pääkaupunki?": "Helsinki.",  # punctuation dropped: 100, 100
    "Mikä on Suomen vanhin kaupunki?": "Turku on",  # P 1/2, R 1: F1 2/3, EM 0
    "Mji mkuu wa Kenya ni upi?": "  Nairobi  ",  # stripped: 100, 100
}


def test_tydiqa_scores_known_answers(monkeypatch):
    def output(prompt):
        question = prompt.rsplit("\n", 2)[-2].split(" ", 1)[1]  # "<Question label> <question>" line
        return TYDIQA_OUTPUTS[question]

    monkeypatch.setattr(tydiqa, "generate", scripted(output))
    m = tydiqa.evaluate_tydiqa(None, None, EVAL_FIXTURES, max_context_length=None)["metrics"]
    assert m["english"] == pytest.approx({"exact_match": 200 / 3, "f1": 200 / 3})
    assert m["finnish"] == pytest.approx({"exact_match": 50.0, "f1": (100 + 200 / 3) / 2})
    assert m["swahili"] == pytest.approx({"exact_match": 100.0, "f1": 100.0})
    assert m["average"] == pytest.approx(
        {"exact_match": (200 / 3 + 50 + 100) / 3, "f1": (200 / 3 + (100 + 200 / 3) / 2 + 100) / 3}
    )
    assert m["num_examples"] == 6


def test_demo_scores_known_answers(monkeypatch, tmp_path):
    records = [json.loads(line) for line in (DEMO_DIR / "heldout.jsonl").read_text().splitlines()[:6]]
    path = tmp_path / "heldout.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    # Even records: the reference with surrounding whitespace (right); odd: with a letter appended (wrong).
    outputs = {
        r["messages"][0]["content"]: (
            f"  {r['messages'][-1]['content']}\n" if i % 2 == 0 else r["messages"][-1]["content"] + "x"
        )
        for i, r in enumerate(records)
    }

    def output(prompt):
        return next(v for k, v in outputs.items() if k in prompt)

    class Tok:
        eos_token = "</s>"

    monkeypatch.setattr(demo, "generate", scripted(output))
    result = demo.evaluate_demo(None, Tok(), path)
    assert result["exact_match"] == 0.5 and result["num_examples"] == 6
    assert [p["correct"] for p in result["predictions"]] == [True, False] * 3
    skills = [r["id"].rsplit("-", 1)[-1] for r in records]
    expected = {
        s: sum(i % 2 == 0 for i, k in enumerate(skills) if k == s) / skills.count(s) for s in set(skills)
    }
    assert result["per_skill"] == pytest.approx(expected)
