"""What a directory holds, told by its files: a SpIEL checkpoint, a peft adapter or a full transformers model.

The one place that knows each kind's marker file; spiel-eval, spiel-export and the SpIEL checkpoint
validator (``checkpoint_check``) ask here. The kinds are tried in this order: a SpIEL checkpoint
(``spiel_config.json``), a peft adapter (``adapter_config.json``), a model directory (``config.json``).
"""

from __future__ import annotations

from pathlib import Path

from spiel.checkpoint.format import CONFIG_NAME, DELTA_NAME

PEFT_CONFIG_NAME = "adapter_config.json"
MODEL_CONFIG_NAME = "config.json"
MARKERS = {"spiel": CONFIG_NAME, "peft": PEFT_CONFIG_NAME, "full": MODEL_CONFIG_NAME}
DESCRIPTIONS = {"spiel": "a SpIEL checkpoint", "peft": "a peft adapter", "full": "a full transformers model"}

# A tokenizer saved with a checkpoint: one of the first three makes it loadable; the rest come with it.
TOKENIZER_MAIN_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
TOKENIZER_FILES = TOKENIZER_MAIN_FILES + (
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
)


class CheckpointError(ValueError):
    """`ckpt=` names something that cannot be evaluated or exported (with what to do about it)."""


def detect_kind(directory) -> str | None:
    """ "spiel", "peft" or "full" by the first marker file ``directory`` holds; None when it holds none."""
    directory = Path(directory)
    return next((kind for kind, marker in MARKERS.items() if (directory / marker).is_file()), None)


def checkpoint_kind(path, key: str = "ckpt") -> str:
    """The kind of the directory ``path`` (given as ``key=``); CheckpointError saying what it is otherwise."""
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"{key}={path}: no such directory")
    kind = detect_kind(directory)
    if kind is not None:
        return kind
    hint = ""
    if (directory / DELTA_NAME).is_file():
        hint = f" It has {DELTA_NAME} but no {CONFIG_NAME}: an interrupted save, not a checkpoint."
    elif any(c.is_dir() and c.name.startswith("checkpoint-") for c in directory.iterdir()):
        hint = " It holds checkpoint-N/ directories: pass one of them, or the run's final checkpoint."
    raise CheckpointError(
        f"{key}={path} is neither a SpIEL checkpoint ({CONFIG_NAME}), a peft adapter ({PEFT_CONFIG_NAME}) "
        f"nor a transformers model directory ({MODEL_CONFIG_NAME}).{hint}"
    )


def has_tokenizer(directory) -> bool:
    return any((Path(directory) / f).is_file() for f in TOKENIZER_MAIN_FILES)
