"""The training-set entry point: sources -> checked records -> mixture -> tokens, with counts.

    ds, stats = build_train_dataset(data_cfg, tokenizer, max_seq_len=2048, cache_dir=..., num_proc=8)

Tokenization runs through `datasets.map` (batched, `num_proc` workers) under an explicit fingerprint
of (source rows, selected indices, tokenizer, max_seq_len), so a second run with the same inputs loads
the cached Arrow file instead of re-tokenizing.
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
from datasets import Dataset, concatenate_datasets

from spiel.data.config import parse_data_config
from spiel.data.encode import tokenize_batch
from spiel.data.errors import DataError
from spiel.data.mixture import select_indices
from spiel.data.sources import describe, load_raw

logger = logging.getLogger(__name__)

TOKENIZE_VERSION = "1"  # bump when encode_messages changes what it produces


def tokenizer_fingerprint(tokenizer) -> str:
    """A stable identity for the tokenizer (its serialized form when it has one)."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        # calling the tokenizer with truncation/padding rewrites these two fields: not part of its identity
        state.pop("truncation", None)
        state.pop("padding", None)
        h.update(json.dumps(state, sort_keys=True).encode())
    else:
        from datasets.fingerprint import Hasher

        h.update(Hasher.hash(tokenizer).encode())
    special = (type(tokenizer).__name__, tokenizer.bos_token, tokenizer.eos_token, len(tokenizer))
    h.update(repr(special).encode())
    return h.hexdigest()[:32]


def _select_fingerprint(
    raw: Dataset, indices: list[int], tok_fp: str, max_seq_len: int, template: str = "tulu"
) -> str:
    h = hashlib.sha256()
    h.update(f"{TOKENIZE_VERSION}|{raw._fingerprint}|{tok_fp}|{max_seq_len}|{template}|".encode())
    h.update(np.asarray(indices, dtype=np.int64).tobytes())
    return h.hexdigest()[:32]


def _count_bad(raw: Dataset, name: str, mode: str) -> tuple[list[int], dict]:
    """Row numbers of the valid records, and the bad ones counted by kind (or the first one raised)."""
    kinds = raw["error_kind"]
    good, bad = [], {}
    for i, kind in enumerate(kinds):
        if not kind:
            good.append(i)
            continue
        if mode == "error":
            raise DataError(
                f"source {name!r}: {raw[i]['error']} (set on_bad_record: skip to skip and count such records)"
            )
        bad[kind] = bad.get(kind, 0) + 1
    return good, bad


def _build_source(spec, seed, tokenizer, tok_fp, max_seq_len, cache_dir, num_proc, template="tulu"):
    raw, content = load_raw(spec, cache_dir)
    good, bad = _count_bad(raw, spec.name, spec.on_bad_record)
    indices = select_indices(good, spec.cap, spec.weight, seed, spec.name)
    stats = {
        "origin": describe(spec),
        "content": content,
        "records": len(raw),
        "bad_records": bad,
        "valid": len(good),
        "selected": len(indices),
    }
    if not indices:
        stats.update(dropped_no_trainable=0, examples=0)
        return None, stats
    selected = raw.select(indices)
    tokenized = selected.map(
        tokenize_batch,
        batched=True,
        fn_kwargs={"tokenizer": tokenizer, "max_seq_len": max_seq_len, "template": template},
        remove_columns=selected.column_names,
        num_proc=num_proc if num_proc and num_proc > 1 and len(selected) > 1 else None,
        new_fingerprint=_select_fingerprint(raw, indices, tok_fp, max_seq_len, template),
        desc=f"tokenizing {spec.name}",
    )
    stats.update(dropped_no_trainable=len(selected) - len(tokenized), examples=len(tokenized))
    return tokenized, stats


def format_stats(stats: dict) -> str:
    lines = [
        f"training data: {stats['examples']} examples (max_seq_len {stats['max_seq_len']}, seed {stats['seed']})"
    ]
    for name, s in stats["sources"].items():
        bad = ", ".join(f"{k}: {v}" for k, v in sorted(s["bad_records"].items())) or "none"
        lines.append(
            f"  {name} [{s['origin']}]: {s['records']} records, bad skipped ({bad}), "
            f"{s['selected']} selected of {s['valid']} valid, "
            f"{s['dropped_no_trainable']} dropped with no trainable token after truncation, {s['examples']} kept"
        )
    return "\n".join(lines)


def build_train_dataset(
    data_cfg, tokenizer, max_seq_len: int | None = None, cache_dir: str | None = None, num_proc: int = 1
):
    """Build the tokenized training set; returns `(Dataset[input_ids, labels], stats)`.

    `stats`: {"sources": {name: {origin, content (its fingerprint), records, bad_records{kind: n}, valid, selected,
    dropped_no_trainable, examples}}, "examples", "dropped": {"bad_records", "no_trainable_tokens"},
    "seed", "max_seq_len"}. Also logged (logger "spiel.data.build") at INFO.
    """
    cfg = parse_data_config(data_cfg)
    max_seq_len = int(max_seq_len or cfg.max_seq_len)
    if max_seq_len < 2:
        raise DataError(f"max_seq_len must be at least 2, got {max_seq_len}")
    tok_fp = tokenizer_fingerprint(tokenizer)
    if cfg.template == "model":
        from spiel.data.model_template import check_model_template

        check_model_template(tokenizer)
        tok_fp = hashlib.sha256(f"{tok_fp}|{tokenizer.chat_template}".encode()).hexdigest()[:32]
    parts, per_source = [], {}
    for spec in cfg.sources:
        part, per_source[spec.name] = _build_source(
            spec, cfg.seed, tokenizer, tok_fp, max_seq_len, cache_dir, num_proc, cfg.template
        )
        if part is not None and len(part):
            parts.append(part)
    stats = {
        "sources": per_source,
        "examples": sum(s["examples"] for s in per_source.values()),
        "dropped": {
            "bad_records": sum(sum(s["bad_records"].values()) for s in per_source.values()),
            "no_trainable_tokens": sum(s["dropped_no_trainable"] for s in per_source.values()),
        },
        "seed": cfg.seed,
        "max_seq_len": max_seq_len,
    }
    logger.info("%s", format_stats(stats))
    if not parts:
        raise DataError("no training examples left after filtering:\n" + format_stats(stats))
    dataset = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
    if cfg.shuffle:
        dataset = dataset.shuffle(seed=cfg.seed)
    return dataset, stats
