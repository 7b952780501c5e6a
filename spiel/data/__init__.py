"""Instruction data: sources, the Tülu chat template, label masking, mixtures and batching.

Public entry points:
    encode_messages(messages, tokenizer, max_seq_len=2048) -> {"input_ids", "labels"}
    chat_prompt(messages) / render_messages(messages)          (the Tülu template, text only)
    build_train_dataset(data_cfg, tokenizer, max_seq_len, cache_dir=None, num_proc=1) -> (Dataset, stats)
    DataCollatorForSpiel, DataError

Heavy modules (datasets, torch) load on first use, so importing the template stays cheap.
"""

from __future__ import annotations

import importlib

from spiel.data.errors import DataError
from spiel.data.template import chat_prompt, render_messages

_LAZY = {
    "encode_messages": "spiel.data.encode",
    "encode_prompt_completion": "spiel.data.encode",
    "IGNORE_INDEX": "spiel.data.encode",
    "build_train_dataset": "spiel.data.build",
    "format_stats": "spiel.data.build",
    "parse_data_config": "spiel.data.config",
    "DataCollatorForSpiel": "spiel.data.collator",
    "convert_file": "spiel.data.prepare",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'spiel.data' has no attribute {name!r}")


__all__ = sorted(_LAZY) + ["DataError", "chat_prompt", "render_messages"]
