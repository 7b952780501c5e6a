"""Conversions of the raw paper datasets into canonical conversations, and whole-file conversion.

* Flan v2 (`inputs`/`targets`): as open-instruct's `convert_flan_v2_data`: the prompt gets a "\\n"
  appended unless it already ends in "\\n" or (ignoring trailing whitespace) in ":".
* GPT4-Alpaca (`instruction`/`input`/`output`): one template from `alpaca_templates`, drawn by weight
  with a RNG seeded by (seed, record index), so each record's choice does not depend on file order
  or on how the work is split over processes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from spiel.data.alpaca_templates import WITH_INPUT, WITHOUT_INPUT


def flan_to_messages(inputs: str, targets: str, index: int) -> dict:
    prompt = inputs
    if not prompt.endswith("\n") and not prompt.rstrip().endswith(":"):
        prompt += "\n"
    return {
        "dataset": "flan_v2",
        "id": f"flan_v2_{index}",
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": targets}],
    }


def pick_alpaca_template(has_input: bool, index: int, seed: int = 42) -> str:
    table = WITH_INPUT if has_input else WITHOUT_INPUT
    rng = random.Random(f"{seed}:{index}")  # str seeds hash deterministically (not via PYTHONHASHSEED)
    return rng.choices([t for _, t in table], weights=[w for w, _ in table], k=1)[0]


def alpaca_to_messages(instruction: str, input_text: str, output: str, index: int, seed: int = 42) -> dict:
    instruction, input_text = instruction.strip(), (input_text or "").strip()
    template = pick_alpaca_template(bool(input_text), index, seed)
    prompt = template.format(instruction=instruction, input=input_text)
    return {
        "dataset": "gpt4_alpaca",
        "id": f"gpt4_alpaca_{index}",
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}],
    }


def convert_file(src, dst, fmt: str = "auto", dataset: str | None = None, seed: int = 42,
                 on_bad_record: str = "error") -> dict:
    """Convert a raw JSON/JSONL file into canonical JSONL at `dst`; returns counts.

    Used by scripts/prepare_train_data.py; bad records fail with file:line, or are skipped and counted.
    """
    from spiel.data.reader import iter_records
    from spiel.data.records import RecordError, to_canonical

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
    from spiel.data.errors import DataError

    kind, message = error
    if on_bad_record != "skip":
        raise DataError(message + " (set on_bad_record=skip to skip and count such records)")
    skipped[kind] = skipped.get(kind, 0) + 1
