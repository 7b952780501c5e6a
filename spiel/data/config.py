"""The data config: a plain mapping (a dict, or an OmegaConf node from configs/data/*.yaml).

    sources:                 # one or more; a single-source config is a mixture of one
      - name: tulu2          # a known source (tulu2, flan_v2, gpt4_alpaca, demo) or any label
        path: null           # local JSON/JSONL; wins over hub_id when both are set
        hub_id: null         # HF hub dataset id (null: the known source's default)
        revision: null       # hub revision (branch, tag or commit)
        split: train
        format: auto         # auto | messages | prompt_completion | flan_v2 | alpaca
        cap: null            # at most this many examples from this source
        weight: 1.0          # scale: 0.5 = random half, 2.0 = every record twice
        on_bad_record: null  # overrides the top-level setting for this source
        columns: null        # your column names: {messages: conversation} | {prompt: q, completion: a} | ...
    seed: 42                 # mixture sampling and shuffling
    on_bad_record: error     # error | skip  (skip: drop and count malformed records)
    shuffle: true
    max_seq_len: 2048        # used when the caller passes none
    template_seed: 42        # seeds the choice of GPT4-Alpaca instruction template per record
    template: tulu           # the chat format conversations are trained in: tulu | model (the tokenizer's own)
    max_record_bytes: 1048576  # a longer record is a bad record (too_large): refused, or skipped

One source can also be given at the top level (configs/data/own.yaml: ``spiel-train data=own
data.path=my.jsonl`` or ``data.hub_id=org/name``): ``path``, ``hub_id``, ``revision``, ``split``, ``format``
and ``columns`` there make the single source named ``name``. Files: JSON / JSONL, CSV, Parquet.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from spiel.data.errors import DataError
from spiel.data.reader import DEFAULT_MAX_RECORD_BYTES
from spiel.data.records import FORMATS
from spiel.io.model_source import check_revision
from spiel.paths import ASSETS_DIR, REPO_ROOT

logger = logging.getLogger(__name__)

# Defaults of the known sources. A hub id is used when no local path is given.
KNOWN_SOURCES = {
    "tulu2": {"hub_id": "allenai/tulu-v2-sft-mixture", "path": None},
    "flan_v2": {"hub_id": "ostapeno/tulu_v2_flan_v2_subset", "path": None},
    "gpt4_alpaca": {"hub_id": None, "path": "data/processed/gpt4_alpaca/gpt4_alpaca_data.jsonl"},
    "demo": {"hub_id": None, "path": str(ASSETS_DIR / "demo" / "train.jsonl")},
}
_SOURCE_KEYS = {
    "name",
    "path",
    "hub_id",
    "revision",
    "split",
    "format",
    "cap",
    "weight",
    "on_bad_record",
    "columns",
}
_SHORTHAND_KEYS = ("path", "hub_id", "revision", "split", "format", "columns")  # one source at the top level
_TOP_KEYS = {
    "name",
    "sources",
    "seed",
    "on_bad_record",
    "shuffle",
    "max_seq_len",
    "template_seed",
    "description",
    "max_record_bytes",
    "template",
    *_SHORTHAND_KEYS,
}
TEMPLATES = ("tulu", "model")  # data.template: the Tülu format (the paper's) | the tokenizer's chat template
# columns: the canonical fields a source's own column names can be mapped to
COLUMN_FIELDS = (
    "messages",
    "role",
    "content",
    "prompt",
    "completion",
    "instruction",
    "input",
    "output",
    "inputs",
    "targets",
)
BAD_RECORD_MODES = ("error", "skip")


@dataclass(frozen=True)
class SourceSpec:
    name: str
    path: str | None = None
    hub_id: str | None = None
    revision: str | None = None
    split: str = "train"
    format: str = "auto"
    cap: int | None = None
    weight: float = 1.0
    on_bad_record: str = "error"
    template_seed: int = 42
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    columns: tuple[tuple[str, str], ...] = ()  # (canonical field, the source's column name)


@dataclass(frozen=True)
class DataConfig:
    sources: list[SourceSpec] = field(default_factory=list)
    seed: int = 42
    on_bad_record: str = "error"
    shuffle: bool = True
    max_seq_len: int = 2048
    template: str = "tulu"


def _as_dict(node, what: str) -> dict:
    if hasattr(node, "_content") or type(node).__name__ in ("DictConfig", "ListConfig"):
        from omegaconf import OmegaConf  # only when given an OmegaConf node

        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, Mapping):
        raise DataError(f"{what} must be a mapping, got {type(node).__name__}")
    return dict(node)


def _check_mode(mode, where: str) -> str:
    if mode not in BAD_RECORD_MODES:
        raise DataError(f"{where}: on_bad_record must be one of {', '.join(BAD_RECORD_MODES)}, got {mode!r}")
    return mode


def resolve_path(path: str) -> Path:
    """Absolute as given; a relative path is looked up in the working directory, then the repo root."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    for base in (Path.cwd(), REPO_ROOT):
        if (base / p).exists():
            return base / p
    return Path.cwd() / p  # does not exist: the reader reports it by this name


def _parse_columns(columns, where: str) -> tuple[tuple[str, str], ...]:
    if columns is None:
        return ()
    columns = _as_dict(columns, f"{where}: columns")
    unknown = sorted(set(columns) - set(COLUMN_FIELDS))
    if unknown:
        raise DataError(
            f"{where}: columns maps the fields {', '.join(COLUMN_FIELDS)} to your column names; "
            f"{unknown} is not one of them (write columns: {{prompt: question, completion: answer}})"
        )
    bad = {k: v for k, v in columns.items() if not isinstance(v, str) or not v}
    if bad:
        raise DataError(f"{where}: columns values must be column names (strings), got {bad}")
    return tuple(sorted(columns.items()))


def _shorthand_source(cfg: dict) -> list[dict] | None:
    """The single source given by top-level path/hub_id (configs/data/own.yaml), or None."""
    given = {k: cfg.get(k) for k in _SHORTHAND_KEYS if cfg.get(k) is not None}
    if not given.get("path") and not given.get("hub_id"):
        return None
    if cfg.get("sources"):
        raise DataError(
            "data config: give your data either as data.path / data.hub_id (one source) or as "
            "data.sources (several), not both"
        )
    return [{"name": cfg.get("name") or "own", **given}]


def parse_data_config(data_cfg) -> DataConfig:
    cfg = _as_dict(data_cfg, "data config")
    unknown = sorted(set(cfg) - _TOP_KEYS)
    if unknown:  # a misspelt key (``+data.sead=1``) would otherwise change nothing, silently
        close = difflib.get_close_matches(str(unknown[0]), sorted(_TOP_KEYS), n=1, cutoff=0.6)
        hint = f"; did you mean data.{close[0]}?" if close else ""
        raise DataError(
            f"data config: unknown key(s) {', '.join(f'data.{k}' for k in unknown)}{hint} (keys added "
            f"with '+' are checked too; known keys of data: {', '.join(sorted(_TOP_KEYS))})"
        )
    top_mode = _check_mode(cfg.get("on_bad_record") or "error", "data config")
    template_seed = int(cfg.get("template_seed", 42))
    max_record_bytes = cfg.get("max_record_bytes")
    max_record_bytes = DEFAULT_MAX_RECORD_BYTES if max_record_bytes is None else max_record_bytes
    if isinstance(max_record_bytes, bool) or not isinstance(max_record_bytes, int) or max_record_bytes < 1:
        raise DataError(
            f"data config: max_record_bytes must be a whole number of bytes >= 1, got {max_record_bytes!r}"
        )
    raw_sources = _shorthand_source(cfg) or cfg.get("sources")
    if not raw_sources:
        if cfg.get("name") == "own":
            raise DataError(
                "data=own needs your data: data.path=<a JSON/JSONL/CSV/Parquet file> or "
                "data.hub_id=<a Hugging Face dataset id>"
            )
        raise DataError("data config: 'sources' must list at least one source")
    specs, names = [], set()
    for i, raw in enumerate(raw_sources):
        src = _as_dict(raw, f"data config sources[{i}]")
        unknown = set(src) - _SOURCE_KEYS
        if unknown:
            raise DataError(
                f"data config sources[{i}]: unknown keys {sorted(unknown)}; allowed: {sorted(_SOURCE_KEYS)}"
            )
        name = src.get("name")
        if not name:
            raise DataError(f"data config sources[{i}]: every source needs a 'name'")
        if name in names:
            raise DataError(f"data config: source name {name!r} appears twice; give each source its own name")
        names.add(name)
        defaults = KNOWN_SOURCES.get(name, {"hub_id": None, "path": None})
        path, hub_id = src.get("path"), src.get("hub_id")
        if not path and not hub_id:
            path, hub_id = defaults["path"], defaults["hub_id"]
        if not path and not hub_id:
            raise DataError(
                f"data config: unknown source {name!r} needs a 'path' or 'hub_id' "
                f"(known sources: {', '.join(KNOWN_SOURCES)})"
            )
        fmt = src.get("format") or "auto"
        if fmt != "auto" and fmt not in FORMATS:
            raise DataError(
                f"source {name!r}: format must be auto or one of {', '.join(FORMATS)}, got {fmt!r}"
            )
        try:
            check_revision(src.get("revision"), f"data sources[{i}].revision")
        except ValueError as e:
            raise DataError(str(e)) from None
        specs.append(
            SourceSpec(
                name=name,
                path=str(path) if path else None,
                hub_id=None if path else hub_id,
                revision=src.get("revision"),
                split=src.get("split") or "train",
                format=fmt,
                cap=None if src.get("cap") is None else int(src["cap"]),
                weight=1.0 if src.get("weight") is None else float(src["weight"]),
                on_bad_record=_check_mode(src.get("on_bad_record") or top_mode, f"source {name!r}"),
                template_seed=template_seed,
                max_record_bytes=max_record_bytes,
                columns=_parse_columns(src.get("columns"), f"source {name!r}"),
            )
        )
    template = cfg.get("template") or "tulu"
    if template not in TEMPLATES:
        raise DataError(
            f"data config: template must be tulu (the paper's chat format) or model (the tokenizer's "
            f"own chat template), got {template!r}"
        )
    return DataConfig(
        template=template,
        sources=specs,
        seed=int(cfg.get("seed", 42)),
        on_bad_record=top_mode,
        shuffle=bool(cfg.get("shuffle", True)),
        max_seq_len=int(cfg.get("max_seq_len") or 2048),
    )
