"""Parsing JSON that spiel did not write itself (checkpoints, benchmark files, run-dir records).

``json.loads`` fails on such text in four ways, only one of them a ``JSONDecodeError``: text that is not
UTF-8, nesting deeper than Python's recursion limit (``RecursionError``) and integers longer than
``sys.get_int_max_str_digits()`` (a plain ``ValueError``). Here each becomes a ``JSONTextError`` saying
why in words, so that callers turn every one into their own one-line refusal.
"""

from __future__ import annotations

import json
import sys


class JSONTextError(ValueError):
    """The text is not JSON Python can read; the message says why (callers prefix the file).
    ``lineno``: the line of a syntax error, else None."""

    def __init__(self, message: str, lineno: int | None = None):
        super().__init__(message)
        self.lineno = lineno


def parse_json(text: str | bytes):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise JSONTextError(
            f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})", e.lineno
        ) from None
    except UnicodeDecodeError as e:
        raise JSONTextError(f"not UTF-8 text ({e})") from None
    except RecursionError:
        raise JSONTextError(f"nested too deeply to parse (over {sys.getrecursionlimit()} levels)") from None
    except ValueError as e:  # the integer digit limit
        raise JSONTextError(f"holds a number Python will not parse ({e})") from None
