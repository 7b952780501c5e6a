"""Raw formats -> canonical conversations, file reading with line numbers, and the prepare script's steps."""

import importlib.util
import json
import re

import pytest

from spiel.data import DataError
from spiel.data.alpaca_templates import WITH_INPUT, WITHOUT_INPUT
from spiel.data.convert import alpaca_to_messages, flan_to_messages, pick_alpaca_template
from spiel.data.prepare import convert_file
from spiel.data.reader import iter_records
from spiel.data.records import RecordError, detect_format, to_canonical
from tests.helpers.paths import DATA_FIXTURES, REPO


def read_jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


@pytest.mark.parametrize(
    "inputs, prompt",
    [
        ("Translate: hi", "Translate: hi\n"),  # newline appended
        ("Q: capital?\nA:", "Q: capital?\nA:"),  # ends in a colon: unchanged
        ("Answer the question:   ", "Answer the question:   "),  # colon before trailing spaces: unchanged
        ("Title this.\n", "Title this.\n"),  # already ends in a newline
    ],
)
def test_flan_prompt_rule(inputs, prompt):
    out = flan_to_messages(inputs, "target", 7)
    assert out == {
        "dataset": "flan_v2",
        "id": "flan_v2_7",
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": "target"}],
    }


def test_alpaca_templates_are_well_formed():
    for _, t in WITH_INPUT:
        assert "{instruction}" in t and "{input}" in t
    for _, t in WITHOUT_INPUT:
        assert "{instruction}" in t and "{input}" not in t
    assert len(set(t for _, t in WITH_INPUT)) >= 10 and len(set(t for _, t in WITHOUT_INPUT)) >= 10


def test_alpaca_conversion_is_seeded_and_varied():
    a = alpaca_to_messages("Add the numbers.", "2 and 3", "5", 3, seed=42)
    assert a == alpaca_to_messages("Add the numbers.", "2 and 3", "5", 3, seed=42)
    user = a["messages"][0]["content"]
    assert "Add the numbers." in user and "2 and 3" in user
    assert a["messages"][1] == {"role": "assistant", "content": "5"} and a["id"] == "gpt4_alpaca_3"
    no_input = alpaca_to_messages("Name a planet.", "", "Mars", 0)["messages"][0]["content"]
    assert "Name a planet." in no_input and "Input" not in no_input
    # the choice depends on (seed, index): across records and seeds several templates get used
    picks = {pick_alpaca_template(True, i, seed=42) for i in range(200)}
    assert len(picks) >= 8
    assert [pick_alpaca_template(True, i, 1) for i in range(50)] != [
        pick_alpaca_template(True, i, 2) for i in range(50)
    ]


def test_detect_format_and_unknown_format():
    assert detect_format({"messages": []}) == "messages"
    assert detect_format({"prompt": "a", "completion": "b"}) == "prompt_completion"
    assert detect_format({"inputs": "a", "targets": "b"}) == "flan_v2"
    assert detect_format({"instruction": "a", "input": "", "output": "b"}) == "alpaca"
    with pytest.raises(RecordError, match="none of the known field sets"):
        detect_format({"text": "a"})


@pytest.mark.parametrize(
    "messages, kind, text",
    [
        ([], "empty_messages", "no messages"),
        (
            [{"role": "human", "content": "a"}, {"role": "assistant", "content": "b"}],
            "unknown_role",
            "unknown role 'human'",
        ),
        ([{"role": "user", "content": "a"}], "no_assistant", "no assistant turn"),
        (
            [{"role": "user", "content": " "}, {"role": "assistant", "content": "b"}],
            "empty_message",
            "message 0 (user) is empty",
        ),
        (
            [{"role": "user", "content": 3}, {"role": "assistant", "content": "b"}],
            "bad_messages",
            "no string 'content'",
        ),
        ("hello", "bad_messages", "must be a list"),
    ],
)
def test_invalid_conversations(messages, kind, text):
    with pytest.raises(RecordError, match=re.escape(text)) as info:
        to_canonical({"messages": messages}, "auto", 0, "x")
    assert info.value.kind == kind


def test_jsonl_reader_reports_line_numbers():
    rows = list(iter_records(DATA_FIXTURES / "bad_records.jsonl"))
    where, record, error = rows[2]
    assert where.endswith("bad_records.jsonl:3") and record is None
    assert error[0] == "bad_json" and "bad_records.jsonl:3: malformed JSON line" in error[1]
    assert all(e is None for _, _, e in rows[:2] + rows[3:])


def test_json_array_reader_gives_each_record_its_line(tmp_path):
    rows = list(iter_records(DATA_FIXTURES / "alpaca_gpt4_data.json"))
    assert len(rows) == 4
    assert [w.rsplit(":", 1)[1] for w, _, _ in rows] == ["2", "7", "12", "17"]
    broken = tmp_path / "broken.json"
    broken.write_text('[\n  {"a": 1},\n  {"a": 2,,}\n]\n')
    with pytest.raises(DataError, match=r"broken.json:3: malformed JSON"):
        list(iter_records(broken))
    missing_comma = tmp_path / "missing.json"
    missing_comma.write_text('[\n  {"a": 1}\n  {"a": 2}\n]\n')
    with pytest.raises(DataError, match=r"missing.json:3: malformed JSON \(expected ','"):
        list(iter_records(missing_comma))


def test_missing_file_message(tmp_path):
    with pytest.raises(DataError, match="data file not found: .*nope.jsonl"):
        list(iter_records(tmp_path / "nope.jsonl"))


def test_convert_file_for_each_raw_format(tmp_path):
    flan = convert_file(DATA_FIXTURES / "flan_raw.jsonl", tmp_path / "flan.jsonl", fmt="flan_v2")
    assert flan == {"read": 5, "written": 5, "skipped": {}}
    rows = read_jsonl(tmp_path / "flan.jsonl")
    assert rows[0]["messages"][0]["content"] == "Translate to French: Good morning\n"
    assert rows[2]["messages"][0]["content"] == "Q: What is the capital of Italy?\nA:"
    assert [r["id"] for r in rows] == [f"flan_v2_{i}" for i in range(5)]

    alpaca = convert_file(DATA_FIXTURES / "alpaca_gpt4_data.json", tmp_path / "alpaca.jsonl", fmt="alpaca")
    assert alpaca["written"] == 4
    rows = read_jsonl(tmp_path / "alpaca.jsonl")
    assert (
        rows[1]["messages"][1]["content"] == "Positive"
        and "I love this film." in rows[1]["messages"][0]["content"]
    )

    tulu = convert_file(DATA_FIXTURES / "tulu_messages.jsonl", tmp_path / "tulu.jsonl")
    assert tulu["written"] == 4 and read_jsonl(tmp_path / "tulu.jsonl")[0]["id"] == "oasst1_0"


def test_convert_file_bad_records_error_or_skip(tmp_path):
    with pytest.raises(DataError, match=r"bad_records.jsonl:3: malformed JSON line"):
        convert_file(DATA_FIXTURES / "bad_records.jsonl", tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()
    counts = convert_file(DATA_FIXTURES / "bad_records.jsonl", tmp_path / "out.jsonl", on_bad_record="skip")
    assert counts["written"] == 3 and counts["skipped"] == {
        "bad_json": 1,
        "unknown_role": 1,
        "empty_messages": 1,
        "no_assistant": 1,
        "empty_message": 1,
    }


def load_script():
    spec = importlib.util.spec_from_file_location(
        "prepare_train_data", REPO / "scripts" / "prepare_train_data.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_script_offline_with_local_stand_ins(tmp_path, monkeypatch, capsys):
    script = load_script()
    hub_rows = {
        script.TULU2_HUB: read_jsonl(DATA_FIXTURES / "tulu_messages.jsonl")
        + [{"dataset": "x", "id": "bad", "messages": []}],
        script.FLAN_HUB: [flan_to_messages("Q?", "A", 0)],
    }
    monkeypatch.setattr(script, "load_hub_dataset", lambda hub_id: hub_rows[hub_id])
    monkeypatch.setattr(
        script, "download_url", lambda url, dst: pytest.fail("alpaca should be read from --raw")
    )
    monkeypatch.setattr(script, "download_hub_file", lambda repo, name, d: DATA_FIXTURES / "flan_raw.jsonl")
    raw = tmp_path / "raw"
    (raw / "gpt4_alpaca").mkdir(parents=True)
    (raw / "gpt4_alpaca" / "alpaca_gpt4_data.json").write_bytes(
        (DATA_FIXTURES / "alpaca_gpt4_data.json").read_bytes()
    )
    out = tmp_path / "processed"
    assert script.main(["--out", str(out), "--raw", str(raw)]) == 0
    printed = capsys.readouterr().out
    assert "[tulu2] 5 read, 4 written" in printed and "1 skipped" in printed
    assert len(read_jsonl(out / "tulu_v2" / "tulu_v2_data.jsonl")) == 4
    assert read_jsonl(out / "flan_v2" / "flan_v2_data.jsonl")[0]["messages"][1]["content"] == "A"
    assert len(read_jsonl(out / "gpt4_alpaca" / "gpt4_alpaca_data.jsonl")) == 4
    # --flan-raw converts the raw inputs/targets file instead
    assert script.main(["--out", str(out), "--raw", str(raw), "--only", "flan_v2", "--flan-raw"]) == 0
    assert len(read_jsonl(out / "flan_v2" / "flan_v2_data.jsonl")) == 5
