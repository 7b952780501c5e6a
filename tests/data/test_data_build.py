"""build_train_dataset end to end: sources, mixtures, drop counts, caching, bad input, hub path (local only)."""

import json

import datasets
import pytest
from transformers import PreTrainedTokenizerFast

import spiel.data.encode as encode_module
from spiel.data import DataError, build_train_dataset
from spiel.data.encode import IGNORE_INDEX
from tests.helpers.paths import DATA_FIXTURES

datasets.disable_progress_bars()


@pytest.fixture(scope="module")
def tok():
    return PreTrainedTokenizerFast(
        tokenizer_file=str(DATA_FIXTURES / "char_tokenizer.json"),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def conv(i, system=None):
    msgs = [{"role": "system", "content": system}] if system else []
    return {
        "id": f"c{i}",
        "messages": msgs
        + [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"answer {i}"}],
    }


def decoded(ds, tok):
    return ["".join(tok.convert_ids_to_tokens(ids)) for ids in ds["input_ids"]]


def test_all_raw_formats_in_one_mixture(tok, tmp_path):
    cfg = {
        "sources": [
            {"name": "tulu", "path": str(DATA_FIXTURES / "tulu_messages.jsonl")},
            {"name": "flan", "path": str(DATA_FIXTURES / "flan_raw.jsonl")},
            {"name": "alpaca", "path": str(DATA_FIXTURES / "alpaca_gpt4_data.json")},
            {"name": "pc", "path": str(DATA_FIXTURES / "prompt_completion.jsonl")},
        ],
        "seed": 0,
    }
    ds, stats = build_train_dataset(cfg, tok, max_seq_len=2048, cache_dir=str(tmp_path))
    assert ds.column_names == ["input_ids", "labels"]
    assert {n: s["examples"] for n, s in stats["sources"].items()} == {
        "tulu": 4,
        "flan": 5,
        "alpaca": 4,
        "pc": 3,
    }
    assert stats["examples"] == len(ds) == 16 and stats["dropped"] == {
        "bad_records": 0,
        "no_trainable_tokens": 0,
    }
    texts = decoded(ds, tok)
    assert "<s><|user|>\nTranslate to French: Good morning\n<|assistant|>\nBonjour</s>" in texts
    assert "<s>Q: 1+1= 2</s>" in texts
    for row in ds:
        assert len(row["input_ids"]) == len(row["labels"]) and any(x != IGNORE_INDEX for x in row["labels"])


def test_truncated_before_any_answer_is_dropped_and_counted(tok, tmp_path):
    rows = [conv(0), conv(1, system="x" * 100), conv(2)]
    cfg = {"sources": [{"name": "s", "path": write_jsonl(tmp_path / "s.jsonl", rows)}]}
    ds, stats = build_train_dataset(cfg, tok, max_seq_len=60, cache_dir=str(tmp_path / "c"))
    assert len(ds) == 2 and stats["sources"]["s"]["dropped_no_trainable"] == 1
    assert stats["dropped"]["no_trainable_tokens"] == 1
    assert all("x" * 50 not in t for t in decoded(ds, tok))


def test_empty_result_after_filtering(tok, tmp_path):
    cfg = {"sources": [{"name": "s", "path": write_jsonl(tmp_path / "s.jsonl", [conv(0, system="y" * 80)])}]}
    with pytest.raises(
        DataError, match=r"no training examples left after filtering:(.|\n)*1 dropped with no trainable token"
    ):
        build_train_dataset(cfg, tok, max_seq_len=40, cache_dir=str(tmp_path / "c"))


def test_mixture_caps_weights_and_determinism(tok, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [conv(i) for i in range(40)])
    b = write_jsonl(tmp_path / "b.jsonl", [conv(100 + i) for i in range(10)])

    def build(seed, cache, cap=12, weight_b=2.0):
        cfg = {
            "sources": [{"name": "a", "path": a, "cap": cap}, {"name": "b", "path": b, "weight": weight_b}],
            "seed": seed,
        }
        return build_train_dataset(cfg, tok, 64, cache_dir=str(tmp_path / cache))

    ds1, st1 = build(7, "c1")
    assert st1["sources"]["a"]["selected"] == 12 and st1["sources"]["b"]["selected"] == 20
    texts = decoded(ds1, tok)
    assert all(
        texts.count(f"<s><|user|>\nq{100 + i}\n<|assistant|>\nanswer {100 + i}</s>") == 2 for i in range(10)
    )
    ds2, _ = build(7, "c2")  # fresh cache: same seed gives the same examples in the same order
    assert ds2["input_ids"][:] == ds1["input_ids"][:]
    ds3, _ = build(8, "c3")
    assert sorted(decoded(ds3, tok)) != sorted(texts)  # another seed caps `a` to another subset
    ds4, st4 = build(7, "c4", cap=None, weight_b=0.5)
    assert st4["sources"]["a"]["selected"] == 40 and st4["sources"]["b"]["selected"] == 5


def test_second_run_reads_the_cache_instead_of_tokenizing(tok, tmp_path, monkeypatch):
    cfg = {"sources": [{"name": "tulu", "path": str(DATA_FIXTURES / "tulu_messages.jsonl")}]}
    calls = []
    real = encode_module.encode_many
    monkeypatch.setattr(
        encode_module, "encode_many", lambda convs, *a, **k: calls.extend(convs) or real(convs, *a, **k)
    )
    first, _ = build_train_dataset(cfg, tok, 128, cache_dir=str(tmp_path))
    assert len(calls) == 4
    second, stats = build_train_dataset(cfg, tok, 128, cache_dir=str(tmp_path))
    assert len(calls) == 4 and second["input_ids"][:] == first["input_ids"][:] and stats["examples"] == 4
    build_train_dataset(cfg, tok, 100, cache_dir=str(tmp_path))  # a new max_seq_len is a new tokenization
    assert len(calls) == 8


def test_the_cache_is_keyed_by_content_not_path_size_and_mtime(tok, tmp_path):
    """A same-size rewrite with its mtime restored (what ``cp -p`` or ``rsync -t`` leave) is read again."""
    import os

    path = tmp_path / "data.jsonl"
    write_jsonl(path, [conv(i) for i in range(3)])
    cfg = {"sources": [{"name": "s", "path": str(path)}]}
    first, stats = build_train_dataset(cfg, tok, 128, cache_dir=str(tmp_path / "c"))
    stat = os.stat(path)
    path.write_text(path.read_text().replace("answer 1", "answer 7"))  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(path).st_size == stat.st_size and os.stat(path).st_mtime_ns == stat.st_mtime_ns
    second, stats2 = build_train_dataset(cfg, tok, 128, cache_dir=str(tmp_path / "c"))
    assert "answer 7" in "".join(decoded(second, tok)) and "answer 7" not in "".join(decoded(first, tok))
    assert stats["sources"]["s"]["content"] != stats2["sources"]["s"]["content"]
    assert stats2["sources"]["s"]["content"].startswith("sha256:")


def test_parallel_tokenization_matches_serial(tok, tmp_path):
    cfg = {
        "sources": [{"name": "s", "path": write_jsonl(tmp_path / "s.jsonl", [conv(i) for i in range(30)])}]
    }
    serial, _ = build_train_dataset(cfg, tok, 64, cache_dir=str(tmp_path / "c1"), num_proc=1)
    parallel, _ = build_train_dataset(cfg, tok, 64, cache_dir=str(tmp_path / "c2"), num_proc=2)
    assert parallel["input_ids"][:] == serial["input_ids"][:] and parallel["labels"][:] == serial["labels"][:]


# --- bad input ---------------------------------------------------------------------------------------
def test_malformed_line_names_file_and_line(tok, tmp_path):
    cfg = {"sources": [{"name": "bad", "path": str(DATA_FIXTURES / "bad_records.jsonl")}]}
    with pytest.raises(DataError, match=r"bad_records\.jsonl:3: malformed JSON line .*on_bad_record: skip"):
        build_train_dataset(cfg, tok, 128, cache_dir=str(tmp_path))


def test_skip_mode_counts_each_kind_and_logs_them(tok, tmp_path, caplog):
    cfg = {
        "sources": [{"name": "bad", "path": str(DATA_FIXTURES / "bad_records.jsonl")}],
        "on_bad_record": "skip",
    }
    with caplog.at_level("INFO", logger="spiel.data.build"):
        ds, stats = build_train_dataset(cfg, tok, 128, cache_dir=str(tmp_path))
    assert "training data: 3 examples" in caplog.text
    assert (
        "8 records, bad skipped (bad_json: 1, empty_message: 1, empty_messages: 1, no_assistant: 1, unknown_role: 1)"
        in caplog.text
    )
    assert len(ds) == 3
    assert stats["sources"]["bad"]["bad_records"] == {
        "bad_json": 1,
        "unknown_role": 1,
        "empty_messages": 1,
        "no_assistant": 1,
        "empty_message": 1,
    }
    assert stats["dropped"]["bad_records"] == 5


@pytest.mark.parametrize(
    "record, message",
    [
        (
            {"messages": [{"role": "human", "content": "a"}, {"role": "assistant", "content": "b"}]},
            r"s\.jsonl:2: message 0 has unknown role 'human'",
        ),
        ({"messages": []}, r"s\.jsonl:2: conversation has no messages"),
        ({"messages": [{"role": "user", "content": "a"}]}, r"s\.jsonl:2: conversation has no assistant turn"),
        ({"text": "a"}, r"s\.jsonl:2: record has none of the known field sets"),
    ],
)
def test_invalid_record_messages(tok, tmp_path, record, message):
    path = write_jsonl(tmp_path / "s.jsonl", [conv(0), record])
    with pytest.raises(DataError, match=message):
        build_train_dataset(
            {"sources": [{"name": "s", "path": path}]}, tok, 128, cache_dir=str(tmp_path / "c")
        )


def test_missing_file(tok, tmp_path):
    cfg = {"sources": [{"name": "gone", "path": str(tmp_path / "gone.jsonl")}]}
    with pytest.raises(
        DataError, match=r"source 'gone': data file not found: .*gone\.jsonl \(run scripts/prepare"
    ):
        build_train_dataset(cfg, tok, 128, cache_dir=str(tmp_path))


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"sources": []}, "at least one source"),
        ({"sources": [{"name": "mine"}]}, "unknown source 'mine' needs a 'path' or 'hub_id'"),
        ({"sources": [{"name": "demo"}, {"name": "demo"}]}, "appears twice"),
        ({"sources": [{"name": "demo", "capp": 3}]}, r"unknown keys \['capp'\]"),
        (
            {"sources": [{"name": "demo"}], "on_bad_record": "ignore"},
            "on_bad_record must be one of error, skip",
        ),
        ({"sources": [{"name": "demo", "format": "csv"}]}, "format must be auto or one of"),
        ({"sources": [{"name": "demo", "weight": -1}]}, "weight must be >= 0"),
    ],
)
def test_config_errors(tok, tmp_path, cfg, message):
    with pytest.raises(DataError, match=message):
        build_train_dataset(cfg, tok, 128, cache_dir=str(tmp_path))


# --- hub sources, exercised only against local copies ------------------------------------------------
def test_hub_source_through_load_dataset(tok, tmp_path, monkeypatch):
    import spiel.data.sources as sources

    seen = {}

    def local_copy(hub_id, split, revision):
        seen.update(hub_id=hub_id, split=split, revision=revision)
        return datasets.load_dataset(
            "json",
            data_files=str(DATA_FIXTURES / "tulu_messages.jsonl"),
            split=split,
            cache_dir=str(tmp_path / "hf"),
        )

    monkeypatch.setattr(sources, "load_dataset", local_copy)
    ds, stats = build_train_dataset({"sources": [{"name": "tulu2"}]}, tok, 256, cache_dir=str(tmp_path))
    assert seen == {"hub_id": "allenai/tulu-v2-sft-mixture", "split": "train", "revision": None}
    assert stats["sources"]["tulu2"]["origin"] == "hub:allenai/tulu-v2-sft-mixture" and len(ds) == 4


def test_hub_failure_is_a_clear_message(tok, tmp_path, monkeypatch):
    import spiel.data.sources as sources

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach the Hub (offline mode)")

    monkeypatch.setattr(sources, "load_dataset", offline)
    with pytest.raises(
        DataError,
        match=r"source 'flan_v2': could not load the Hugging Face dataset "
        r"'ostapeno/tulu_v2_flan_v2_subset'.*ConnectionError.*load_dataset\('ostapeno/"
        r"tulu_v2_flan_v2_subset', split='train'\).*data.path=",
    ):
        build_train_dataset({"sources": [{"name": "flan_v2"}]}, tok, 256, cache_dir=str(tmp_path))
