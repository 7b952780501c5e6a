"""Test-wide settings. TRITON_INTERPRET must be set before triton is first imported, so it is set here,
at the top of the first file pytest loads; tests never touch a hub or wandb's servers."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Idle OpenMP threads busy-wait by default, which slows everything on a shared 2-core box.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def model():
    """The shipped tiny pretrained LLaMA (fresh per test module, in eval mode); a module may override it."""
    from spiel.testing import tiny_model

    return tiny_model()


@pytest.fixture(scope="module")
def tok():
    """The tiny model's byte-level tokenizer."""
    from spiel.testing import tiny_tokenizer

    return tiny_tokenizer()
