"""Reading local JSON / JSONL files record by record, keeping file:line for every message.

`iter_records` yields `(where, record, error)`: `where` is "path:line"; `error` is None or a
`(kind, message)` pair for a line that is not valid JSON (the caller decides to fail or skip).
A JSON *array* file (like alpaca_gpt4_data.json) is parsed element by element so that records still
get line numbers; a syntax error there cannot be skipped (nothing after it can be trusted), so it
always fails.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from spiel.data.errors import DataError

_WS = " \t\r\n"


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


def iter_records(path) -> Iterator[tuple[str, object, tuple[str, str] | None]]:
    path = check_file(path)
    if _first_char(path) == "[":
        yield from _iter_array(path)
    else:
        yield from _iter_lines(path)


def _iter_lines(path: Path):
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            if not raw.strip():
                continue
            try:
                yield where, json.loads(raw.decode("utf-8")), None
            except UnicodeDecodeError as e:
                yield where, None, ("bad_json", f"{where}: line is not valid UTF-8 ({e.reason})")
            except json.JSONDecodeError as e:
                yield where, None, ("bad_json", f"{where}: malformed JSON line ({e.msg} at column {e.colno})")


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos


def _iter_array(path: Path):
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
        return
    while True:
        if pos >= len(text):
            fail(pos, "unexpected end of file inside the top-level array")
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
        yield f"{path}:{line_at(pos)}", obj, None
        pos = _skip_ws(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
        elif pos < len(text) and text[pos] == "]":
            if _skip_ws(text, pos + 1) != len(text):
                fail(pos + 1, "extra data after the top-level array")
            return
        else:
            fail(pos, "expected ',' or ']' between records")


def file_signature(path) -> str:
    """What identifies a file's contents for caching: absolute path, size and modification time."""
    st = os.stat(path)
    return f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}"
