"""Reading local JSON / JSONL files record by record, keeping file:line for every message.

`iter_records` yields `(where, record, error)`: `where` is "path:line"; `error` is None or a
`(kind, message)` pair for a record that cannot be used (the caller decides to fail or skip): not valid
JSON or UTF-8, nested deeper than Python can parse, text with an unpaired UTF-16 surrogate escape
(``"\ud800"``: valid JSON, not valid Unicode), or longer than ``max_record_bytes`` (a JSONL line over the
cap is never read into memory whole). A JSON *array* file (like alpaca_gpt4_data.json) is parsed element
by element so that records still get line numbers; a syntax error there cannot be skipped (nothing after
it can be trusted), so it always fails. An empty (or whitespace-only) file is a DataError.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from spiel.data.errors import DataError

_WS = " \t\r\n"
DEFAULT_MAX_RECORD_BYTES = 1 << 20  # 1 MiB: ~100x the longest chat of the paper's data; data.max_record_bytes
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def check_file(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if not path.is_file():
        raise DataError(f"data path is not a file: {path}")
    return path


def _first_char(path: Path) -> str:
    with open(path, "rb") as f:
        while chunk := f.read(4096):
            stripped = chunk.lstrip()
            if stripped:
                return chr(stripped[0])
    return ""


def iter_records(
    path, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> Iterator[tuple[str, object, tuple[str, str] | None]]:
    path = check_file(path)
    first = _first_char(path)
    if not first:
        raise DataError(f"{path}: file is empty (no records)")
    if first == "[":
        yield from _iter_array(path, max_record_bytes)
    else:
        yield from _iter_lines(path, max_record_bytes)


def too_large(where: str, size: int, cap: int) -> tuple[str, str]:
    return (
        "too_large",
        f"{where}: record is {size:,} bytes, over data.max_record_bytes={cap:,} "
        "(raise the cap if such records are wanted)",
    )


def _parse(where: str, text: str):
    """(record, None) or (None, (kind, message)) for one record's JSON text."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        return None, ("bad_json", f"{where}: malformed JSON line ({e.msg} at column {e.colno})")
    except RecursionError:
        return None, (
            "too_deep",
            f"{where}: record is nested too deeply to parse (over {sys.getrecursionlimit()} levels)",
        )
    except ValueError as e:  # Python refuses integers over sys.get_int_max_str_digits() digits
        return None, ("bad_number", f"{where}: record holds a number Python will not parse ({e})")
    return record, _check_text(where, text, record)


def _check_text(where: str, text: str, record) -> tuple[str, str] | None:
    if _SURROGATE_ESCAPE.search(text):  # rare: only then pay for a full check
        try:
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return "bad_text", (
                f"{where}: record holds an unpaired UTF-16 surrogate escape (like \\ud800), "
                "which is not valid Unicode text"
            )
    return None


def _lines(f, cap: int):
    """(line number, raw bytes or None, size in bytes): a line over ``cap`` bytes is read past in 1 MiB
    chunks, never held whole."""
    lineno = 0
    while raw := f.readline(cap + 2):
        lineno += 1
        if raw.endswith(b"\n") or len(raw) < cap + 2:  # the whole line (or the file's last one)
            size = len(raw.rstrip(b"\r\n"))
            yield lineno, (raw if size <= cap else None), size
            continue
        size, chunk = len(raw), raw
        while not chunk.endswith(b"\n") and (chunk := f.readline(1 << 20)):
            size += len(chunk)
        yield lineno, None, size - chunk.endswith(b"\n")


def _iter_lines(path: Path, cap: int):
    with open(path, "rb") as f:
        for lineno, raw, size in _lines(f, cap):
            where = f"{path}:{lineno}"
            if raw is None:
                yield where, None, too_large(where, size, cap)
                continue
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield where, None, ("bad_json", f"{where}: line is not valid UTF-8 ({e.reason})")
                continue
            record, error = _parse(where, text)
            yield where, (None if error else record), error


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos


def _iter_array(path: Path, cap: int):
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: file is not valid UTF-8 (byte {e.start})") from None
    decoder = json.JSONDecoder()
    line, counted = 1, 0  # line number of position `counted`, advanced incrementally (no O(n^2) recount)

    def line_at(pos: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, pos)
        counted = pos
        return line

    def fail(pos: int, what: str):
        raise DataError(f"{path}:{line_at(pos)}: malformed JSON ({what})")

    pos = _skip_ws(text, 0) + 1  # past "["
    pos = _skip_ws(text, pos)
    if pos < len(text) and text[pos] == "]":
        raise DataError(f"{path}: the file is an empty JSON array (no records)")
    while True:
        if pos >= len(text):
            fail(pos, "unexpected end of file inside the top-level array")
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:  # where the element ends is unknown: nothing after it can be trusted
            raise DataError(
                f"{path}:{line_at(pos)}: record is nested too deeply to parse (over "
                f"{sys.getrecursionlimit()} levels)"
            ) from None
        except ValueError as e:  # an integer over Python's digit limit; where the element ends is unknown
            raise DataError(
                f"{path}:{line_at(pos)}: record holds a number Python will not parse ({e})"
            ) from None
        where = f"{path}:{line_at(pos)}"
        size = len(text[pos:end].encode("utf-8"))
        if size > cap:
            yield where, None, too_large(where, size, cap)
        else:
            error = _check_text(where, text[pos:end], obj)
            yield where, (None if error else obj), error
        pos = _skip_ws(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
        elif pos < len(text) and text[pos] == "]":
            if _skip_ws(text, pos + 1) != len(text):
                fail(pos + 1, "extra data after the top-level array")
            return
        else:
            fail(pos, "expected ',' or ']' between records")


def file_sha256(path) -> str:
    """What identifies a file's contents (for the cache and the run's data fingerprint): the SHA-256 of its
    bytes. Path, size and mtime do not: ``cp -p`` or ``rsync -t`` rewrite a file keeping all three."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
