"""Test helpers: the shipped tiny base model, its tokenizer and the demo task.

    from spiel.testing import tiny_model, tiny_tokenizer, TINY_MODEL_DIR, DEMO_DIR

`tiny_model()` returns a fresh fp32 copy in eval mode on each call (tests may mutate it freely); the
weights are read from disk once per process. Imports only torch and transformers.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from spiel.paths import ASSETS_DIR, REPO_ROOT  # noqa: F401 (re-exported)

TINY_MODEL_DIR = ASSETS_DIR / "tiny-llama"
DEMO_DIR = ASSETS_DIR / "demo"


def _check(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: spiel's assets ship with the git checkout (an installed wheel does not "
            "include them); regenerate with scripts/make_tiny_model.py / scripts/make_demo_data.py"
        )
    return path


@functools.lru_cache(maxsize=1)
def _master_model() -> LlamaForCausalLM:
    model = LlamaForCausalLM.from_pretrained(
        _check(TINY_MODEL_DIR), dtype=torch.float32, trust_remote_code=False
    )
    return model.eval()


@functools.lru_cache(maxsize=1)
def _master_tokenizer():
    return AutoTokenizer.from_pretrained(_check(TINY_MODEL_DIR), trust_remote_code=False)


def tiny_model() -> LlamaForCausalLM:
    """A fresh copy of the tiny pretrained LLaMA (fp32, eval mode, CPU)."""
    return copy.deepcopy(_master_model())


def tiny_tokenizer():
    """A fresh copy of the tiny model's tokenizer (byte-level, BOS added, pad distinct from EOS)."""
    return copy.deepcopy(_master_tokenizer())
