"""Whole-file conversion of a raw JSON/JSONL dataset into canonical JSONL (scripts/prepare_train_data.py).

Each record goes through `records.to_canonical`; a bad one fails with file:line, or is skipped and counted.
"""

from __future__ import annotations

import json
from pathlib import Path

from spiel.data.errors import DataError
from spiel.data.reader import iter_records
from spiel.data.records import RecordError, to_canonical


def convert_file(
    src, dst, fmt: str = "auto", dataset: str | None = None, seed: int = 42, on_bad_record: str = "error"
) -> dict:
    """Convert a raw JSON/JSONL file into canonical JSONL at `dst`; returns counts.

    Used by scripts/prepare_train_data.py; bad records fail with file:line, or are skipped and counted.
    """
    src, dst = Path(src), Path(dst)
    dataset = dataset or src.stem
    counts = {"read": 0, "written": 0, "skipped": {}}
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        for index, (where, record, error) in enumerate(iter_records(src)):
            counts["read"] += 1
            if error is None:
                try:
                    record = to_canonical(record, fmt, index, dataset, seed)
                except RecordError as e:
                    error = (e.kind, f"{where}: {e}")
            if error is not None:
                _skip_or_raise(error, on_bad_record, counts["skipped"])
                continue
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            counts["written"] += 1
    tmp.replace(dst)  # a crash mid-way never leaves a complete-looking output file
    return counts


def _skip_or_raise(error: tuple[str, str], on_bad_record: str, skipped: dict) -> None:
    kind, message = error
    if on_bad_record != "skip":
        raise DataError(message + " (set on_bad_record=skip to skip and count such records)")
    skipped[kind] = skipped.get(kind, 0) + 1
