"""Telling checkpoint kinds apart by their files (spiel.checkpoint.kind), and the messages that name them."""

from __future__ import annotations

import pytest

from spiel.checkpoint.kind import CheckpointError, checkpoint_kind, detect_kind, has_tokenizer
from spiel.checkpoint.read import read_checkpoint


def _dir(root, name, *files):
    d = root / name
    d.mkdir()
    for f in files:
        (d / f).write_text("{}")
    return d


def test_each_kind_by_its_marker_file_spiel_first_then_peft_then_full(tmp_path):
    assert detect_kind(_dir(tmp_path, "spiel", "spiel_config.json", "config.json")) == "spiel"
    assert detect_kind(_dir(tmp_path, "peft", "adapter_config.json", "config.json")) == "peft"
    assert detect_kind(_dir(tmp_path, "full", "config.json")) == "full"
    assert detect_kind(_dir(tmp_path, "none", "README.md")) is None
    assert checkpoint_kind(tmp_path / "peft") == "peft"


def test_what_is_not_a_checkpoint_is_named_with_a_hint(tmp_path):
    with pytest.raises(CheckpointError, match=r"^ckpt=.*missing: no such directory"):
        checkpoint_kind(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="interrupted save"):
        checkpoint_kind(_dir(tmp_path, "partial", "spiel_delta.safetensors"))
    run = _dir(tmp_path, "run")
    (run / "checkpoint-10").mkdir()
    with pytest.raises(CheckpointError, match=r"^out=.*checkpoint-N/ directories"):
        checkpoint_kind(run, key="out")
    # Only directories named checkpoint-* earn that hint: a file so named, or another directory, does not.
    other = _dir(tmp_path, "other", "checkpoint-notes.txt")
    (other / "logs").mkdir()
    with pytest.raises(CheckpointError) as refused:
        checkpoint_kind(other)
    assert "checkpoint-N/" not in str(refused.value)
    assert "neither a SpIEL checkpoint" in str(refused.value)


@pytest.mark.parametrize(
    ("files", "looks_like"),
    [(["adapter_config.json"], "a peft adapter"), (["config.json"], "a full transformers model")],
)
def test_the_spiel_reader_says_what_another_kind_looks_like(tmp_path, files, looks_like):
    d = _dir(tmp_path, "other", *files)
    with pytest.raises(
        FileNotFoundError,
        match=f"not a complete SpIEL checkpoint: no spiel_config.json \\(it looks like {looks_like}\\)",
    ):
        read_checkpoint(d)


def test_a_tokenizer_needs_one_of_its_main_files(tmp_path):
    assert not has_tokenizer(_dir(tmp_path, "template_only", "chat_template.jinja"))
    assert has_tokenizer(_dir(tmp_path, "tok", "tokenizer.json"))
