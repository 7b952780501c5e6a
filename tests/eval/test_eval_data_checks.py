"""Benchmark data is read and checked before the model loads: a malformed or empty file fails with one
message naming the file and line (spiel-eval: exit 2), and nothing is ever scored over 0 items."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from spiel.eval.data import BenchDataError
from spiel.eval.runner import check_bench_data
from spiel.testing import DEMO_DIR
from tests.helpers.paths import EVAL_FIXTURES, REPO

BENCH_DIR = REPO / "configs" / "bench"
MMLU_TEST = "mmlu/test/abstract_algebra_test.csv"
MMLU_DEV = "mmlu/dev/abstract_algebra_dev.csv"
GSM = "gsm/test.jsonl"
BBH_TASK = "bbh/bbh/boolean_expressions.json"
BBH_PROMPT = "bbh/cot-prompts/boolean_expressions.txt"
TYDIQA_DEV = "tydiqa/tydiqa-goldp-v1.1-dev.json"
DEMO = "demo.jsonl"


def bench_config(name: str) -> dict:
    return yaml.safe_load((BENCH_DIR / f"{name}.yaml").read_text())


def write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def edit_lines(rel: str, change):
    def run(root: Path):
        lines = (root / rel).read_text(encoding="utf-8").splitlines()
        change(lines)
        write(root / rel, "\n".join(lines) + "\n")

    return run


def edit_json(rel: str, change):
    def run(root: Path):
        data = json.loads((root / rel).read_text(encoding="utf-8"))
        change(data)
        write(root / rel, json.dumps(data))

    return run


def replace_text(rel: str, text: str):
    return lambda root: write(root / rel, text)


def set_line(i: int, text: str):
    def change(lines):
        lines[i] = text

    return change


def gsm_line(i: int, record):
    return set_line(i, json.dumps(record))


def first_qa(data):
    return data["data"][0]["paragraphs"][0]["qas"][0]


# (bench, file, corruption, message): the message must name the file, and the line where there is one.
CASES = [
    ("mmlu", MMLU_TEST, replace_text(MMLU_TEST, ""), "file is empty"),
    ("mmlu", MMLU_TEST, replace_text(MMLU_TEST, "\n\n"), "file is empty"),
    (
        "mmlu",
        MMLU_TEST,
        edit_lines(MMLU_TEST, set_line(1, "How many?,2,3,4,C")),
        r":2: expected 6 columns .* got 5",
    ),
    (
        "mmlu",
        MMLU_TEST,
        edit_lines(MMLU_TEST, set_line(2, "Which?,a,b,c,d,E")),
        r":3: the answer 'E' is not one of A, B, C, D",
    ),
    (
        "mmlu",
        MMLU_TEST,
        edit_lines(MMLU_TEST, set_line(0, "Which?,a,b,c,d,")),
        r":1: the answer '' is not one of",
    ),
    (
        "mmlu",
        MMLU_DEV,
        edit_lines(MMLU_DEV, set_line(3, "Q?,a,b,c,d,nan")),
        r":4: the answer 'nan' is not one of",
    ),
    ("gsm", GSM, replace_text(GSM, ""), "file is empty"),
    ("gsm", GSM, replace_text(GSM, "\n  \n"), "file is empty"),
    ("gsm", GSM, edit_lines(GSM, set_line(2, "{not json")), r":3: not valid JSON"),
    ("gsm", GSM, edit_lines(GSM, set_line(1, '{"question": ' + "7" * 5000 + "}")), r":2: holds a number"),
    ("gsm", GSM, edit_lines(GSM, set_line(0, "[" * 100_000 + "]" * 100_000)), r":1: nested too deeply"),
    (
        "gsm",
        GSM,
        edit_lines(GSM, gsm_line(1, {"question": "How many?"})),
        r":2: 'answer' must be text ending in '#### <number>'",
    ),
    (
        "gsm",
        GSM,
        edit_lines(GSM, gsm_line(3, {"question": "How many?", "answer": "so #### twelve"})),
        r":4: the answer after '####' is 'twelve', not a number",
    ),
    ("gsm", GSM, edit_lines(GSM, gsm_line(0, {"answer": "#### 3"})), r":1: no 'question' text"),
    ("gsm", GSM, edit_lines(GSM, set_line(0, "[1, 2]")), r":1: no 'question' text"),
    ("bbh", BBH_TASK, replace_text(BBH_TASK, ""), r":1: not valid JSON"),
    (
        "bbh",
        BBH_TASK,
        replace_text(BBH_TASK, '{"examples": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        "nested too deeply",
    ),
    ("tydiqa", TYDIQA_DEV, replace_text(TYDIQA_DEV, '{"data": ' + "9" * 5000 + "}"), "holds a number"),
    ("bbh", BBH_TASK, replace_text(BBH_TASK, '{"examples": []}'), "non-empty 'examples' list"),
    (
        "bbh",
        BBH_TASK,
        edit_json(BBH_TASK, lambda d: d["examples"][2].pop("target")),
        r"examples\[2\] has no 'target'",
    ),
    (
        "bbh",
        BBH_TASK,
        edit_json(BBH_TASK, lambda d: d["examples"][0].update(input=None)),
        r"examples\[0\] has no 'input'",
    ),
    ("bbh", BBH_PROMPT, replace_text(BBH_PROMPT, "canary\n-----\n"), "no prompt after the first two lines"),
    ("tydiqa", TYDIQA_DEV, replace_text(TYDIQA_DEV, ""), r":1: not valid JSON"),
    ("tydiqa", TYDIQA_DEV, replace_text(TYDIQA_DEV, '{"data": []}'), "holds no items to score"),
    ("tydiqa", TYDIQA_DEV, replace_text(TYDIQA_DEV, "[]"), "the file has no 'data' list"),
    (
        "tydiqa",
        TYDIQA_DEV,
        edit_json(TYDIQA_DEV, lambda d: first_qa(d).update(answers=[])),
        r"data\[0\]\.paragraphs\[0\]\.qas\[0\] \(english-1001-0\) needs a non-empty 'answers' list",
    ),
    (
        "tydiqa",
        TYDIQA_DEV,
        edit_json(TYDIQA_DEV, lambda d: first_qa(d).pop("question")),
        r"qas\[0\] .* no 'question'",
    ),
    (
        "tydiqa",
        TYDIQA_DEV,
        edit_json(TYDIQA_DEV, lambda d: d["data"][0]["paragraphs"][0].pop("context")),
        r"paragraphs\[0\] has no 'context'",
    ),
    ("demo", DEMO, replace_text(DEMO, ""), "file is empty"),
    (
        "demo",
        DEMO,
        edit_lines(DEMO, set_line(1, '{"messages": [{"role": "user", "content": "hi"}]}')),
        r":2: bad demo record \(last message is not from the assistant\)",
    ),
    (
        "demo",
        DEMO,
        edit_lines(DEMO, set_line(0, '{"messages": [{"role": "assistant"}]}')),
        r":1: bad demo record",
    ),
]


def data_copy(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(EVAL_FIXTURES, root)
    lines = (DEMO_DIR / "heldout.jsonl").read_text(encoding="utf-8").splitlines()[:5]
    write(root / DEMO, "\n".join(lines) + "\n")
    return root


def check(bench: str, root: Path, **overrides):
    cfg = dict(bench_config(bench), **overrides)
    if bench == "demo":
        cfg["path"] = str(root / DEMO)
    check_bench_data(bench, cfg, root, seed=42, limit=None)


def test_the_fixture_data_passes_the_checks(tmp_path):
    root = data_copy(tmp_path)
    for bench in ("mmlu", "gsm", "bbh", "tydiqa", "demo"):
        check(bench, root)


@pytest.mark.parametrize(
    "bench, rel, corrupt, message", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_bad_benchmark_data_is_refused_naming_the_file_and_line(tmp_path, bench, rel, corrupt, message):
    root = data_copy(tmp_path)
    corrupt(root)
    with pytest.raises(BenchDataError, match=message) as err:
        check(bench, root)
    assert str(err.value).startswith(f"{root / rel}") or f"{root / rel}" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_selection_with_no_items_is_refused(tmp_path):
    root = data_copy(tmp_path)
    with pytest.raises(BenchDataError, match="no items to score"):
        check("bbh", root, tasks=[])


@pytest.mark.parametrize("evaluate", ["gsm", "mmlu"])
def test_evaluate_refuses_an_empty_file_rather_than_scoring_zero_items(tmp_path, model, tok, evaluate):
    """The library entry points (not only spiel-eval) never report a score over 0 items."""
    from spiel.eval.gsm import evaluate_gsm
    from spiel.eval.mmlu import evaluate_mmlu

    root = data_copy(tmp_path)
    if evaluate == "gsm":
        write(root / GSM, "")
        with pytest.raises(BenchDataError, match="file is empty"):
            evaluate_gsm(model, tok, root, n_shot=1, max_new_tokens=2)
    else:
        write(root / MMLU_TEST, "")
        with pytest.raises(BenchDataError, match="file is empty"):
            evaluate_mmlu(model, tok, root, ntrain=1, subject_list=["abstract_algebra"])


def test_spiel_eval_refuses_bad_data_before_loading_the_model(tmp_path):
    root = data_copy(tmp_path)
    write(root / GSM, "")
    out = subprocess.run(
        [
            "spiel-eval",
            "model=tiny",
            "bench=gsm",
            f"eval.data_dir={root}",
            "eval.device=cpu",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=dict(os.environ, HYDRA_FULL_ERROR="0"),
        timeout=300,
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stdout + out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines == [f"spiel-eval: BenchDataError: {root / GSM}: file is empty (no problems to score)"]
    assert "loading the model" not in out.stdout + out.stderr  # refused before the model loads
