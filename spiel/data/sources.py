"""Loading one source (a local file or a hub dataset) into an on-disk `datasets.Dataset` of canonical rows.

Files: JSON / JSONL (read record by record with file:line, ``spiel.data.reader``), CSV and Parquet (read
by `datasets`; a record is a row, named file:row N). A source's ``columns`` maps its own column names onto
the fields the formats use (``rename_columns``).

Every raw record becomes one row, valid or not: invalid ones carry `error_kind` and `error` (with
file:line) so the builder can fail on the first or skip and count them, and so a second run reads the
counts back from the cache instead of re-parsing. The Arrow result is cached by `from_generator`
under a fingerprint of the source's content (a file's SHA-256, a hub dataset's fingerprint), its format
and template seed; that content fingerprint is also what a run records to notice changed data on resume.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from datasets import Dataset, Features, List, Value

from spiel.data.config import SourceSpec, resolve_path
from spiel.data.errors import DataError
from spiel.data.reader import check_file, file_sha256, iter_records, too_large
from spiel.data.records import RecordError, to_canonical

RAW_FORMAT_VERSION = "2"  # bump when the canonical rows a given file produces change

FEATURES = Features(
    {
        "dataset": Value("string"),
        "id": Value("string"),
        "messages": List({"role": Value("string"), "content": Value("string")}),
        "prompt": Value("string"),
        "completion": Value("string"),
        "where": Value("string"),
        "error_kind": Value("string"),
        "error": Value("string"),
    }
)


def load_dataset(*args, **kwargs):
    """`datasets.load_dataset`, imported late (and patchable in tests, which never download)."""
    import datasets

    return datasets.load_dataset(*args, **kwargs)


def _row(where: str, canonical: dict | None = None, error: tuple[str, str] | None = None) -> dict:
    row = {
        "dataset": "",
        "id": "",
        "messages": [],
        "prompt": "",
        "completion": "",
        "where": where,
        "error_kind": "",
        "error": "",
    }
    if canonical is not None:
        row.update(canonical)
    if error is not None:
        row["error_kind"], row["error"] = error
    return row


SHAREGPT_ROLES = {"human": "user", "gpt": "assistant"}  # read as chat roles when columns maps `role`
TABLE_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def rename_columns(record, columns: dict[str, str]):
    """``record`` with the source's column names (``columns``: field -> its name) renamed to the fields
    the formats read; ``role`` / ``content`` rename the keys inside each message. A messages column
    that holds JSON text (a CSV cell) is parsed."""
    if not columns or not isinstance(record, dict):
        return record
    inner = {k: columns[k] for k in ("role", "content") if k in columns}
    out = dict(record)
    for field, name in columns.items():
        if field not in inner and name in record:
            out.pop(name)
            out[field] = record[name]
    messages = out.get("messages")
    if isinstance(messages, str):
        try:
            messages = out["messages"] = json.loads(messages)
        except json.JSONDecodeError:
            return out  # the format check reports the field
    if inner and isinstance(messages, list):
        renamed = []
        for m in messages:
            if isinstance(m, dict):
                m = {k: v for k, v in m.items() if k not in inner.values()} | {
                    field: m.get(name) for field, name in inner.items()
                }
                if "role" in inner:
                    m["role"] = SHAREGPT_ROLES.get(m["role"], m["role"])
            renamed.append(m)
        out["messages"] = renamed
    return out


def _canonical_rows(records, fmt: str, dataset: str, seed: int, columns: tuple = ()):
    columns = dict(columns)
    for index, (where, record, error) in enumerate(records):
        if error is None:
            try:
                yield _row(where, to_canonical(rename_columns(record, columns), fmt, index, dataset, seed))
                continue
            except RecordError as e:
                error = (e.kind, f"{where}: {e}")
        yield _row(where, error=error)


def _file_rows(path: str, fmt: str, dataset: str, seed: int, max_record_bytes: int, columns: tuple = ()):
    yield from _canonical_rows(iter_records(path, max_record_bytes), fmt, dataset, seed, columns)


def _hub_record(where: str, row: dict, cap: int):
    size = len(json.dumps(row, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass"))
    return (where, None, too_large(where, size, cap)) if size > cap else (where, row, None)


def _hub_rows(
    hub: Dataset, hub_id: str, fmt: str, dataset: str, seed: int, max_record_bytes: int, columns: tuple = ()
):
    records = (_hub_record(f"{hub_id}[{i}]", dict(row), max_record_bytes) for i, row in enumerate(hub))
    yield from _canonical_rows(records, fmt, dataset, seed, columns)


def _table_rows(path: str, fmt: str, dataset: str, seed: int, max_record_bytes: int, columns: tuple = ()):
    table = load_dataset(TABLE_SUFFIXES[Path(path).suffix.lower()], data_files=path, split="train")
    records = (_hub_record(f"{path}:row {i + 1}", dict(row), max_record_bytes) for i, row in enumerate(table))
    yield from _canonical_rows(records, fmt, dataset, seed, columns)


def _fingerprint(*parts) -> str:
    return hashlib.sha256("|".join(str(p) for p in (RAW_FORMAT_VERSION, *parts)).encode()).hexdigest()[:32]


def describe(spec: SourceSpec) -> str:
    return f"hub:{spec.hub_id}" if spec.hub_id else str(resolve_path(spec.path))


def load_raw(spec: SourceSpec, cache_dir: str | None = None) -> tuple[Dataset, str]:
    """All records of a source as canonical rows (with error columns), and the content fingerprint they
    were read under (see the module docstring)."""
    if spec.hub_id:
        hub = _load_hub(spec)
        content = f"hub:{hub._fingerprint}"
        gen, kwargs = _hub_rows, {"hub": hub, "hub_id": spec.hub_id}
    else:
        path = resolve_path(spec.path)
        try:
            check_file(path)
        except DataError as e:
            hint = (
                " (run scripts/prepare_train_data.py, or set the source's path)"
                if spec.name != "demo"
                else ""
            )
            raise DataError(f"source {spec.name!r}: {e}{hint}") from None
        content = f"sha256:{file_sha256(path)}"
        gen = _table_rows if path.suffix.lower() in TABLE_SUFFIXES else _file_rows
        kwargs = {"path": str(path)}
    fp = _fingerprint(
        content,
        spec.hub_id or "file",
        spec.format,
        spec.name,
        spec.template_seed,
        spec.max_record_bytes,
        spec.columns,
    )
    kwargs.update(
        fmt=spec.format,
        dataset=spec.name,
        seed=spec.template_seed,
        max_record_bytes=spec.max_record_bytes,
        columns=spec.columns,
    )
    try:
        return (
            Dataset.from_generator(
                gen, features=FEATURES, gen_kwargs=kwargs, cache_dir=cache_dir, fingerprint=fp
            ),
            content,
        )
    except Exception as e:  # datasets wraps errors raised in the generator; surface ours plainly
        cause = e
        while cause is not None and not isinstance(cause, DataError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise DataError(str(cause)) from None
        raise


def _load_hub(spec: SourceSpec) -> Dataset:
    try:
        return load_dataset(spec.hub_id, split=spec.split, revision=spec.revision)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise DataError(
            f"source {spec.name!r}: could not load the Hugging Face dataset {spec.hub_id!r} (split {spec.split!r}): "
            f'{type(e).__name__}: {first}. To get it: on a machine with internet, run `python -c "import '
            f"datasets; datasets.load_dataset('{spec.hub_id}', split='{spec.split}')\"` to fill the datasets cache "
            f"(~/.cache/huggingface/datasets; copy it here), or save it as a JSONL/Parquet file and train with "
            f"data.path=<that file> instead of the hub id."
        ) from None
