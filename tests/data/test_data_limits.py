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


def record_of(size: int) -> str:
    """A JSON record of exactly ``size`` bytes (ASCII)."""
    text = '{"k": "' + "x" * (size - 9) + '"}'
    assert len(text) == size
    return text


@pytest.mark.parametrize("ending", ["\n", "\r\n"])
def test_the_record_size_boundary_in_jsonl_lines(tmp_path, ending):
    """Lines of cap - 1, cap, cap + 1, cap + 2, cap + 3 and 5·cap bytes (the line ending not counted): a
    record is whole up to the cap and too large one byte past it, whatever its line ending, and the line
    after an oversized one is read from its start with its own line number (a plain-Python reference)."""
    cap = 64
    sizes = [cap - 1, cap, cap + 1, cap + 2, cap + 3, 5 * cap, cap]
    path = tmp_path / "r.jsonl"
    path.write_bytes("".join(record_of(s) + ending for s in sizes).encode())
    got = list(iter_records(path, max_record_bytes=cap))
    assert [where for where, _, _ in got] == [f"{path}:{i}" for i in range(1, len(sizes) + 1)]
    for (where, record, error), size in zip(got, sizes, strict=True):
        if size <= cap:
            assert error is None and record == json.loads(record_of(size)), (size, error)
        else:
            assert record is None and error[0] == "too_large", size
            if ending == "\n":
                assert f"{where}: record is {size:,} bytes, over data.max_record_bytes={cap:,}" in error[1]


@pytest.mark.parametrize("extra", [-1, 0, 1])
def test_the_record_size_boundary_in_json_array_elements(tmp_path, extra):
    """An array element of exactly the cap is a record; one byte past it is too large (its UTF-8 bytes:
    a two-byte character counts twice)."""
    element = '{"k": "é' + "x" * 20 + '"}'
    cap = len(element.encode()) - extra  # extra -1: one to spare, 0: exactly the cap, 1: one byte over
    assert len(element.encode()) == len(element) + 1
    path = tmp_path / "a.json"
    path.write_text("[" + element + ",\n" + record_of(10) + "]", encoding="utf-8")
    (where, record, error), (_, last, last_error) = iter_records(path, max_record_bytes=cap)
    assert last == {"k": "x"} and last_error is None
    if extra <= 0:
        assert error is None and record == json.loads(element)
    else:
        assert record is None and error == (
            "too_large",
            f"{path}:1: record is {cap + 1:,} bytes, over data.max_record_bytes={cap:,} "
            "(raise the cap if such records are wanted)",
        )


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3 << 20])
def test_file_sha256_is_the_sha256_of_all_the_bytes(tmp_path, size):
    """Read in 1 MiB blocks: sizes at a block boundary, one byte either side, and several blocks."""
    import hashlib
    import random

    from spiel.data.reader import file_sha256

    data = random.Random(size).randbytes(size)
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_blank_lines_are_skipped_and_the_records_after_them_keep_their_line_numbers(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_bytes(b'{"a": 1}\n\n   \t\r\n{"a": 2}\n\n{"a": 3}')
    got = [(where, record, error) for where, record, error in iter_records(path)]
    assert got == [
        (f"{path}:1", {"a": 1}, None),
        (f"{path}:4", {"a": 2}, None),
        (f"{path}:6", {"a": 3}, None),
    ]


@pytest.mark.parametrize(
    "text, line",
    [
        ('[{"a": 1},\n {"a": 2}]\n\n{"a": 3}\n', 2),
        ('[{"a": 1},\n {"a": 2}\n\n]\n{"a": 3}', 4),
        ('[{"a":1}\n]x', 2),  # the ']' at an odd position, just after a newline
    ],
    ids=["after-the-last-record", "on-a-line-of-its-own", "after-a-newline"],
)
def test_extra_data_after_the_array_is_named_at_the_line_of_the_closing_bracket(tmp_path, text, line):
    path = tmp_path / "x.json"
    path.write_text(text)
    with pytest.raises(
        DataError, match=rf"x\.json:{line}: malformed JSON \(extra data after the top-level array\)"
    ):
        list(iter_records(path))


@pytest.mark.parametrize("blank", [4095, 4096, 4097, 3 * 4096])
def test_the_file_kind_is_found_after_any_amount_of_leading_whitespace(tmp_path, blank):
    """Array or lines is decided by the first non-whitespace byte, however far in (across 4 KiB reads)."""
    array, lines = tmp_path / "a.json", tmp_path / "l.jsonl"
    array.write_text(" " * (blank - 1) + "\n" + '[{"a": 1}]')
    lines.write_text("\n" * blank + '{"a": 1}\n')
    assert [r for _, r, _ in iter_records(array)] == [{"a": 1}]
    assert list(iter_records(lines)) == [(f"{lines}:{blank + 1}", {"a": 1}, None)]
    lines.write_text(" \n\t" * blank)
    with pytest.raises(DataError, match=r"l\.jsonl: file is empty \(no records\)"):
        list(iter_records(lines))


def test_a_last_line_ending_in_a_lone_carriage_return_counts_without_it(tmp_path):
    """The file's last record, exactly at the cap, followed by "\\r" and no "\\n": a whole record."""
    cap = 64
    path = tmp_path / "cr.jsonl"
    path.write_bytes((record_of(10) + "\n" + record_of(cap) + "\r").encode())
    got = list(iter_records(path, max_record_bytes=cap))
    assert [error for _, _, error in got] == [None, None] and got[1][1] == json.loads(record_of(cap))


def test_a_line_that_is_not_utf8_is_a_bad_record_named_by_its_line(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": "\xff\xfe"}\n{"a": 3}\n')
    got = list(iter_records(path))
    assert got[0] == (f"{path}:1", {"a": 1}, None) and got[2] == (f"{path}:3", {"a": 3}, None)
    assert got[1] == (
        f"{path}:2",
        None,
        ("bad_json", f"{path}:2: line is not valid UTF-8 (invalid start byte)"),
    )


def test_an_array_cut_off_after_a_comma_says_so_in_a_long_file(tmp_path):
    """Past 256 characters (where Python's small-integer cache ends) the end of the text is still found."""
    path = tmp_path / "cut.json"
    path.write_text("[" + json.dumps({"a": "x" * 300}) + ",\n  ")
    with pytest.raises(
        DataError, match=r"cut\.json:2: malformed JSON \(unexpected end of file inside the top-level array\)"
    ):
        list(iter_records(path))


@pytest.mark.parametrize(
    "tail, line",
    [("", 3), (' "x"]', 3), (" +1]", 3)],
    ids=["cut-off-after-a-record", "string-after-a-record", "plus-after-a-record"],
)
def test_a_json_array_without_a_separator_after_a_record_names_the_place(tmp_path, tail, line):
    """After a record only ',' or ']' may follow: end of file, or any other character (some sort before
    ','), is refused at its line. The file is over 256 characters, so positions are not small cached ints."""
    path = tmp_path / "a.json"
    path.write_text("[\n" + conv(0, "y" * 300) + ",\n" + conv(1) + tail)
    with pytest.raises(
        DataError, match=rf"a\.json:{line}: malformed JSON \(expected ',' or '\]' between records\)"
    ):
        list(iter_records(path))


@pytest.mark.parametrize("cap", [64, 66, 67])  # 66 and 67: caps with bit 1 set (cap | 2 is not cap + 2)
def test_a_last_line_of_exactly_the_cap_is_a_record_and_one_byte_more_is_not(tmp_path, cap):
    path = tmp_path / "r.jsonl"
    for size, ok in [(cap, True), (cap + 1, False), (cap - 1, True)]:
        path.write_bytes((record_of(10) + "\n" + record_of(size)).encode())  # no newline at the end
        (first, _, error1), (where, record, error) = list(iter_records(path, max_record_bytes=cap))
        assert error1 is None and where == f"{path}:2"
        assert (error is None and record == json.loads(record_of(size))) if ok else error[0] == "too_large"


def test_a_one_byte_cap_reads_each_line_whole_and_counts_lines(tmp_path):
    """The smallest cap: every record is too large, each on its own line number (lines are read up to cap + 2
    bytes, so a two-byte line is never split into two)."""
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"{}\n{}\n")
    got = list(iter_records(path, max_record_bytes=1))
    assert [(where, error[0]) for where, _, error in got] == [
        (f"{path}:1", "too_large"),
        (f"{path}:2", "too_large"),
    ]


def test_a_compact_array_with_no_whitespace_reads_every_record(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('[{"a":1},{"b":2},{"c":3}]')
    assert [record for _, record, _ in iter_records(path)] == [{"a": 1}, {"b": 2}, {"c": 3}]


def test_an_opening_bracket_alone_is_an_unfinished_array_in_a_long_file(tmp_path):
    """Nothing but "[" and 300 blanks (past Python's small-integer cache): the end of the text is found."""
    path = tmp_path / "open.json"
    path.write_text("[" + " " * 300)
    with pytest.raises(
        DataError, match=r"open\.json:1: malformed JSON \(unexpected end of file inside the top-level array\)"
    ):
        list(iter_records(path))


def test_an_array_file_that_is_not_utf8_is_refused_with_the_byte(tmp_path):
    path = tmp_path / "u.json"
    path.write_bytes(b'[{"a": 1}, {"a": "\xff"}]')
    with pytest.raises(DataError, match=r"u\.json: file is not valid UTF-8 \(byte 18\)"):
        list(iter_records(path))
