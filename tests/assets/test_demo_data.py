"""The demo task files (assets/demo): format, correctness of every answer, disjoint splits, seeded."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from spiel.testing import DEMO_DIR
from tests.helpers.script_loader import load_script

skills = load_script("demo_skills")


def read(name: str) -> list[dict]:
    return [json.loads(line) for line in (DEMO_DIR / name).read_text(encoding="utf-8").splitlines()]


def template_regex(template: str) -> re.Pattern:
    pattern = re.escape(template)
    pattern = pattern.replace(re.escape("{x}"), "([a-z]+)")
    pattern = pattern.replace(re.escape("{a}"), r"(\d+)").replace(re.escape("{b}"), r"(\d+)")
    return re.compile(pattern + r"\Z")


def parse_input(skill: str, request: str) -> str:
    """Recover the skill input from a request by matching it against the skill's phrasings."""
    for template in skills.INSTRUCTIONS[skill]:
        m = template_regex(template).match(request)
        if m:
            return f"{m.group(1)} + {m.group(2)}" if skill == "add" else m.group(1)
    raise AssertionError(f"{request!r} matches no {skill} phrasing")


@pytest.fixture(scope="module")
def splits():
    return read("train.jsonl"), read("heldout.jsonl")


def test_sizes_and_balance(splits):
    train, heldout = splits
    assert 2000 <= len(train) <= 5000 and 200 <= len(heldout) <= 500
    for recs in splits:
        counts = Counter(r["id"].rsplit("-", 1)[-1] for r in recs)
        assert set(counts) == set(skills.SKILLS)
        assert len(set(counts.values())) == 1


def test_records_are_canonical(splits):
    ids = [r["id"] for recs in splits for r in recs]
    assert len(ids) == len(set(ids))
    for recs in splits:
        for r in recs:
            assert set(r) == {"dataset", "id", "messages"} and r["dataset"] == "demo"
            assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
            assert all(set(m) == {"role", "content"} and m["content"] for m in r["messages"])


def test_every_answer_is_correct(splits):
    for recs in splits:
        for r in recs:
            skill = r["id"].rsplit("-", 1)[-1]
            x = parse_input(skill, r["messages"][0]["content"])
            assert r["messages"][1]["content"] == skills.solve(skill, x), r


def test_heldout_inputs_are_disjoint_from_train(splits):
    def inputs(recs):
        return {parse_input(r["id"].rsplit("-", 1)[-1], r["messages"][0]["content"]) for r in recs}

    train, heldout = splits
    assert not inputs(train) & inputs(heldout)
    assert len(inputs(heldout)) == len(heldout)


def test_generator_is_seeded_and_files_are_current(tmp_path):
    mk = load_script("make_demo_data")
    mk.main(["--out", str(tmp_path / "a")])
    for name in ("train.jsonl", "heldout.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (DEMO_DIR / name).read_bytes()
    mk.main(
        ["--out", str(tmp_path / "b"), "--seed", "1", "--train-per-skill", "5", "--heldout-per-skill", "2"]
    )
    other = (tmp_path / "b" / "heldout.jsonl").read_text().splitlines()
    assert len(other) == 2 * len(skills.SKILLS)
    assert other != (DEMO_DIR / "heldout.jsonl").read_text().splitlines()[: len(other)]
