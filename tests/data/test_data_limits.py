"""Training data that used to fail deep inside `datasets` (a 64-line traceback, in both fail and skip
modes) is reported with its file:line, and one huge record cannot blow up memory: records over
data.max_record_bytes are bad records, found while the file is read."""

import json
import subprocess
import sys

import datasets
import pytest
from transformers import PreTrainedTokenizerFast

from spiel.data import DataError, build_train_dataset
from spiel.data.reader import DEFAULT_MAX_RECORD_BYTES, iter_records
from tests.helpers.paths import DATA_FIXTURES

datasets.disable_progress_bars()
DEEP = "[" * 200_000 + "]" * 200_000


@pytest.fixture(scope="module")
def tok():
    return PreTrainedTokenizerFast(
        tokenizer_file=str(DATA_FIXTURES / "char_tokenizer.json"),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )


def conv(i, answer=None):
    return json.dumps(
        {
            "messages": [
                {"role": "user", "content": f"q{i}"},
                {"role": "assistant", "content": answer or f"answer {i}"},
            ]
        }
    )


def build(tmp_path, tok, text, mode="error", **top):
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "s.jsonl"
    path.write_text(text)
    cfg = {"sources": [{"name": "s", "path": str(path)}], "on_bad_record": mode, **top}
    return build_train_dataset(cfg, tok, 64, cache_dir=str(tmp_path / "cache"))


BAD = {
    "deep": ('{"messages": ' + DEEP + "}", "too_deep", r"s\.jsonl:2: record is nested too deeply to parse"),
    "surrogate": (
        '{"messages": [{"role": "user", "content": "a\\ud800"}, {"role": "assistant", "content": "b"}]}',
        "bad_text",
        r"s\.jsonl:2: record holds an unpaired UTF-16 surrogate escape",
    ),
    "huge_integer": (
        '{"messages": [], "n": ' + "9" * 5000 + "}",
        "bad_number",
        r"s\.jsonl:2: record holds a number Python will not parse \(Exceeds the limit",
    ),
    "too_large": (
        conv(1, "x" * 5000),
        "too_large",
        r"s\.jsonl:2: record is 5,0\d\d bytes, over data.max_record_bytes=4,096",
    ),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_record_fails_with_its_line_or_is_skipped_and_counted(tok, tmp_path, name):
    line, kind, message = BAD[name]
    text = "\n".join([conv(0), line, conv(2)]) + "\n"
    cap = {"max_record_bytes": 4096} if name == "too_large" else {}  # the others: the default cap
    with pytest.raises(DataError, match=message + r".*on_bad_record: skip"):
        build(tmp_path / "fail", tok, text, **cap)
    ds, stats = build(tmp_path / "skip", tok, text, mode="skip", **cap)
    assert len(ds) == 2 and stats["sources"]["s"]["bad_records"] == {kind: 1}


def test_a_valid_surrogate_pair_is_text_not_an_error(tok, tmp_path):
    pair = (
        '{"messages": [{"role": "user", "content": "\\ud83d\\ude00"}, {"role": "assistant", "content": "b"}]}'
    )
    ds, stats = build(tmp_path, tok, pair + "\n")
    assert len(ds) == 1 and stats["sources"]["s"]["bad_records"] == {}


@pytest.mark.parametrize("text", ["", "   \n\n\t\n"], ids=["empty", "whitespace"])
@pytest.mark.parametrize("mode", ["error", "skip"])
def test_an_empty_file_says_so(tok, tmp_path, text, mode):
    with pytest.raises(DataError, match=r"s\.jsonl: file is empty \(no records\)"):
        build(tmp_path, tok, text, mode=mode)


def test_json_array_files_get_the_same_checks(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(
        "[\n"
        + json.dumps({"instruction": "x" * 100, "output": "y"})
        + ",\n"
        + '{"instruction": "a\\udc00", "output": "b"}\n]'
    )
    errors = [error for _, _, error in iter_records(path, max_record_bytes=64)]
    assert errors[0][0] == "too_large" and f"{path}:2: record is" in errors[0][1]
    assert errors[1][0] == "bad_text" and f"{path}:3:" in errors[1][1]
    path.write_text(" [ ] ")
    with pytest.raises(DataError, match="empty JSON array"):
        list(iter_records(path))
    path.write_text("[" + DEEP + "]")
    with pytest.raises(DataError, match=r"a\.json:1: record is nested too deeply"):
        list(iter_records(path))
    path.write_text("[\n" + conv(0) + ',\n{"n": ' + "9" * 5000 + "}\n]")
    with pytest.raises(DataError, match=r"a\.json:3: record holds a number Python will not parse"):
        list(iter_records(path))


def test_an_oversized_line_is_never_read_whole(tmp_path):
    """A 64 MiB line with a 1 MiB cap: reading the file stays far below the line's size in memory."""
    path = tmp_path / "big.jsonl"
    with open(path, "w") as f:
        f.write(conv(0) + "\n" + '{"messages": "' + "x" * (64 << 20) + '"}\n' + conv(2) + "\n")
    code = (
        "import resource, sys; from spiel.data.reader import iter_records\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"errors = [e for _, _, e in iter_records({str(path)!r})]\n"
        "grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "print(errors[1][0], grew // 1024)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "too_large" and int(out[1]) < 16, out  # MiB of growth (the line is 64 MiB)
    assert DEFAULT_MAX_RECORD_BYTES == 1 << 20


def test_the_cap_is_a_data_key_and_is_checked(tok, tmp_path):
    with pytest.raises(DataError, match="max_record_bytes must be a whole number of bytes >= 1, got 0"):
        build(tmp_path, tok, conv(0) + "\n", max_record_bytes=0)
    from hydra import compose, initialize_config_dir

    import spiel.training.config.hydra_config  # noqa: F401 (registers the schemas train.yaml extends)
    from spiel.paths import CONFIG_DIR

    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        for data in ("demo", "tulu2", "flan_v2", "gpt4_alpaca", "tulu2_alpaca_mix"):
            cfg = compose(config_name="train", overrides=[f"data={data}", "data.max_record_bytes=2048"])
            assert cfg.data.max_record_bytes == 2048


@pytest.mark.parametrize("extra", [0, 1, 2])
def test_a_last_record_without_a_newline_is_read_whole_up_to_the_cap(tok, tmp_path, extra):
    """The file's last line has no newline to end it: it is a whole record when within the cap (exactly
    at it included), and too large one byte past it."""
    last = conv(1, "a longer answer than the first")
    cap = len(last.encode()) + 1 - extra  # extra 0: one byte to spare, 1: exactly the cap, 2: one byte over
    text = conv(0) + "\n" + last  # no newline at the end
    if extra < 2:
        ds, stats = build(tmp_path, tok, text, mode="skip", max_record_bytes=cap)
        assert len(ds) == 2 and not stats["sources"]["s"].get("bad_records")
    else:
        ds, stats = build(tmp_path, tok, text, mode="skip", max_record_bytes=cap)
        assert len(ds) == 1 and stats["sources"]["s"]["bad_records"] == {"too_large": 1}
