"""One's own data: JSONL / CSV / Parquet files with the fields the formats read or with one's own column
names (``columns``), and a Hub dataset by name (``data=own data.hub_id=...``), offline refused with one
message naming the dataset and how to get it. References: the tokenizer called on the expected text, and
literal conversations."""

from __future__ import annotations

import csv
import json

import datasets
import pytest
from omegaconf import OmegaConf

from spiel.data import DataError, build_train_dataset
from spiel.data.config import parse_data_config
from spiel.data.encode import IGNORE_INDEX
from spiel.data.sources import load_raw
from spiel.paths import CONFIG_DIR
from tests.data.test_data_build import tok  # noqa: F401  (the character tokenizer fixture)

datasets.disable_progress_bars()
CHAT = [{"role": "user", "content": "Reverse abc."}, {"role": "assistant", "content": "cba"}]
SHAREGPT = [{"from": "human", "value": "Reverse abc."}, {"from": "gpt", "value": "cba"}]


def own(**keys) -> dict:
    """configs/data/own.yaml with ``keys`` set (data.path=... on the command line)."""
    return {**OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "data" / "own.yaml")), **keys}


def rows(spec_cfg, tmp_path) -> list[dict]:
    spec = parse_data_config(spec_cfg).sources[0]
    raw, _ = load_raw(spec, cache_dir=str(tmp_path / "cache"))
    assert not any(raw["error_kind"]), raw["error"]
    return [{k: r[k] for k in ("messages", "prompt", "completion")} for r in raw]


def test_named_columns_of_a_jsonl_file_as_prompt_and_completion(tok, tmp_path):  # noqa: F811
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"question": "2+2=", "answer": "4"}) + "\n")
    ds, _ = build_train_dataset(
        own(path=str(path), columns={"prompt": "question", "completion": "answer"}),
        tok,
        64,
        cache_dir=str(tmp_path),
    )
    expected = tok("2+2= 4</s>")["input_ids"]
    n_prompt = len(tok("2+2=")["input_ids"])
    assert ds[0]["input_ids"] == expected
    assert ds[0]["labels"] == [IGNORE_INDEX] * n_prompt + expected[n_prompt:]


def test_csv_with_instruction_input_output_reads_as_the_same_jsonl(tmp_path):
    record = {"instruction": "Reverse the word.", "input": "abc", "output": "cba"}
    (tmp_path / "a.jsonl").write_text(json.dumps(record) + "\n")
    (tmp_path / "a.csv").write_text("instruction,input,output\nReverse the word.,abc,cba\n")
    from_csv = rows(own(path=str(tmp_path / "a.csv")), tmp_path)
    assert from_csv == rows(own(path=str(tmp_path / "a.jsonl")), tmp_path)
    assert from_csv[0]["messages"][1] == {"role": "assistant", "content": "cba"}


def test_parquet_with_sharegpt_columns_and_csv_with_json_messages(tmp_path):
    datasets.Dataset.from_list([{"conversations": SHAREGPT}]).to_parquet(str(tmp_path / "s.parquet"))
    sharegpt = own(
        path=str(tmp_path / "s.parquet"),
        columns={"messages": "conversations", "role": "from", "content": "value"},
    )
    assert rows(sharegpt, tmp_path)[0]["messages"] == CHAT
    with open(tmp_path / "m.csv", "w", newline="") as f:
        csv.writer(f).writerows([["chat"], [json.dumps(CHAT)]])
    assert (
        rows(own(path=str(tmp_path / "m.csv"), columns={"messages": "chat"}), tmp_path)[0]["messages"] == CHAT
    )


def test_a_bad_csv_row_is_named_by_file_and_row(tok, tmp_path):  # noqa: F811
    (tmp_path / "b.csv").write_text("prompt,completion\nok,fine\nempty,\n")
    with pytest.raises(DataError, match=r"b.csv:row 2: .*completion"):
        build_train_dataset(own(path=str(tmp_path / "b.csv")), tok, 64, cache_dir=str(tmp_path))


@pytest.mark.parametrize(
    "keys,message",
    [
        ({}, "data=own needs your data: data.path=.* or data.hub_id="),
        (
            {"path": "x.jsonl", "sources": [{"name": "demo"}]},
            "either as data.path / data.hub_id .* or as data.sources",
        ),
        ({"path": "x.jsonl", "columns": {"question": "q"}}, r"\['question'\] is not one of them"),
        ({"path": "x.jsonl", "columns": {"prompt": 3}}, "columns values must be column names"),
    ],
)
def test_own_data_config_errors(keys, message):
    with pytest.raises(DataError, match=message):
        parse_data_config(own(**keys))


def test_a_hub_dataset_by_name(tok, tmp_path, monkeypatch):  # noqa: F811
    import spiel.data.sources as sources

    seen = {}

    def cached(hub_id, split, revision):
        seen.update(hub_id=hub_id, split=split, revision=revision)
        return datasets.Dataset.from_list([{"q": "2+2=", "a": "4"}])

    monkeypatch.setattr(sources, "load_dataset", cached)
    cfg = own(
        hub_id="org/my-data", split="validation", revision="v1", columns={"prompt": "q", "completion": "a"}
    )
    ds, stats = build_train_dataset(cfg, tok, 64, cache_dir=str(tmp_path))
    assert seen == {"hub_id": "org/my-data", "split": "validation", "revision": "v1"}
    assert (
        stats["sources"]["own"]["origin"] == "hub:org/my-data"
        and ds[0]["input_ids"] == tok("2+2= 4</s>")["input_ids"]
    )


def test_a_hub_dataset_offline_is_one_message_naming_it(tok, tmp_path):  # noqa: F811
    """HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are set for every test: the real datasets.load_dataset refuses."""
    with pytest.raises(DataError) as error:
        build_train_dataset(own(hub_id="nobody/not-cached-anywhere"), tok, 64, cache_dir=str(tmp_path))
    text = str(error.value)
    assert (
        "'nobody/not-cached-anywhere'" in text
        and "load_dataset('nobody/not-cached-anywhere', split='train')" in text
    )
    assert "data.path=" in text and "\n" not in text
