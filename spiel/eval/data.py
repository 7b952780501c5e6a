"""Helpers the benchmarks share to read their files under `eval.data_dir`, and the errors when those are
missing or malformed. Each benchmark's layout and sources are in its module (``BENCHMARK.layout``,
``.sources``; ``spiel.eval.benchmark``); `scripts/prepare_eval_data.py` fetches and lays them out on a machine
with internet.
"""

from __future__ import annotations

import json
from pathlib import Path

from spiel.json_text import JSONTextError, parse_json


class MissingDataError(FileNotFoundError):
    """A benchmark's data is not on disk; the message says where it was looked for and how to get it."""


class BenchDataError(ValueError):
    """A benchmark file is malformed or yields nothing to score; the message names the file (and line)."""


def no_items(bench: str, where) -> BenchDataError:
    return BenchDataError(f"{bench}: {where} holds no items to score")


def require(path: Path, bench: str, data_dir: Path) -> Path:
    from spiel.eval.benchmark import benchmarks

    path = Path(path)
    if not path.exists():
        layout = getattr(benchmarks().get(bench), "layout", "")
        raise MissingDataError(
            f"{bench}: {path} not found (expected layout under eval.data_dir={data_dir}: {layout}).\n"
            f"Fetch it on a machine with internet with:\n"
            f"    python scripts/prepare_eval_data.py --data-dir {data_dir} --bench {bench}\n"
            f"then copy {Path(data_dir) / bench} here, or point eval.data_dir=<dir> at an existing copy."
        )
    return path


def numbered_jsonl(path: Path) -> list[tuple[int, object]]:
    """(line number, record) for every non-blank line; bad JSON or text names its line."""
    rows = []
    with Path(path).open(encoding="utf-8") as f:
        lineno = 0
        try:
            for lineno, line in enumerate(f, 1):  # noqa: B007 (read in the except clause)
                if line.strip():
                    rows.append((lineno, parse_json(line)))
        except JSONTextError as e:
            raise BenchDataError(f"{path}:{lineno}: {e}") from None
        except UnicodeDecodeError as e:
            raise BenchDataError(f"{path}:{lineno + 1}: not UTF-8 text ({e})") from None
    return rows


def read_json(path: Path, bench: str):
    """A whole-file JSON document; a syntax error names its line and column."""
    try:
        return parse_json(Path(path).read_text(encoding="utf-8"))
    except JSONTextError as e:
        where = f"{path}:{e.lineno}" if e.lineno else str(path)
        raise BenchDataError(f"{where}: {e}") from None
    except UnicodeDecodeError as e:
        raise BenchDataError(f"{path}: not UTF-8 text ({e})") from None


def write_jsonl(path: Path, rows) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
