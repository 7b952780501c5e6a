"""data.template=model: conversations in the tokenizer's own chat template, loss on exactly the assistant
answers and their end-of-turn marker. Checked token by token against the rendered template for a
SentencePiece-like tokenizer ("▁" word starts, Metaspace) and a byte-level BPE tokenizer, both built here,
and against spiel's Tülu encoder (an independent implementation) on the tiny model, whose template is Tülu."""

from __future__ import annotations

import logging

import pytest
from tokenizers import ByteLevelBPETokenizer, SentencePieceBPETokenizer
from transformers import PreTrainedTokenizerFast

from spiel.data.encode import IGNORE_INDEX, encode_many
from spiel.data.errors import DataError
from spiel.data.model_template import encode_with_model_template
from spiel.testing import tiny_tokenizer

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL = ["<unk>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "Reverse the letters of the word",
    "Hello there and welcome",
    "one two three four five six",
    "cba tzqk answer question letters word",
    "Été 漢字 and or",
] * 20
CONVERSATIONS = [
    [{"role": "user", "content": "Reverse the letters of kqzt."}, {"role": "assistant", "content": "tzqk"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there!"},
        {"role": "user", "content": "Été, 漢字 and <|user|> or </s>?"},
        {"role": "assistant", "content": "1 2  3\n\nfour"},
    ],
]


# every character of the conversations is in the vocabulary ("\n" too, never merged: as LLaMA's byte pieces)
ALPHABET = sorted(set("".join(m["content"] + m["role"] for c in CONVERSATIONS for m in c)) | set("\n<|>_"))


def wrap(backend) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHATML,
    )


def sentencepiece_like(corpus=CORPUS) -> PreTrainedTokenizerFast:
    backend = SentencePieceBPETokenizer()
    backend.train_from_iterator(
        corpus,
        vocab_size=300,
        min_frequency=1,
        special_tokens=SPECIAL,
        initial_alphabet=ALPHABET,
        show_progress=False,
    )
    return wrap(backend)


def byte_level_bpe() -> PreTrainedTokenizerFast:
    backend = ByteLevelBPETokenizer()
    backend.train_from_iterator(
        CORPUS, vocab_size=400, min_frequency=1, special_tokens=SPECIAL, show_progress=False
    )
    return wrap(backend)


def runs(ids, labels, trained: bool) -> list[list[int]]:
    """The maximal runs of tokens that carry loss (trained) or not."""
    out, current = [], []
    for token, label in zip(ids, labels, strict=True):
        if (label != IGNORE_INDEX) == trained:
            current.append(token)
        elif current:
            out.append(current)
            current = []
    return out + ([current] if current else [])


@pytest.mark.parametrize(
    "make", [sentencepiece_like, byte_level_bpe], ids=["sentencepiece", "byte-level-bpe"]
)
def test_ids_are_the_rendered_templates_and_only_answers_carry_loss(make):
    tok = make()
    for messages, enc in zip(CONVERSATIONS, encode_with_model_template(CONVERSATIONS, tok), strict=True):
        rendered = tok.apply_chat_template(messages, tokenize=False)
        assert (
            enc["input_ids"] == tok(rendered, add_special_tokens=False)["input_ids"]
        )  # what a server builds
        trained = [tok.decode(run) for run in runs(enc["input_ids"], enc["labels"], True)]
        assert trained == [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
        assert all(
            label in (IGNORE_INDEX, token)
            for token, label in zip(enc["input_ids"], enc["labels"], strict=True)
        )
        untrained = [tok.decode(run) for run in runs(enc["input_ids"], enc["labels"], False)]
        assert len(untrained) == len(trained) + 1  # prompt, answer, prompt, answer, ..., the last "\n"
        assert all(text.endswith("assistant\n") for text in untrained[:-1]) and untrained[-1].strip() == ""


def test_on_a_tulu_template_it_equals_spiels_tulu_encoder():
    """The tiny model's own template is the Tülu one: both implementations must give the same ids and labels."""
    tok = tiny_tokenizer()
    conversations = [[{**m, "content": m["content"].strip()} for m in c] for c in CONVERSATIONS]
    assert encode_with_model_template(conversations, tok) == encode_many(conversations, tok)


def test_truncation_is_on_the_right():
    tok = byte_level_bpe()
    full = encode_with_model_template(CONVERSATIONS[1:], tok)[0]
    cut = encode_with_model_template(CONVERSATIONS[1:], tok, max_seq_len=7)[0]
    assert cut == {"input_ids": full["input_ids"][:7], "labels": full["labels"][:7]}


def test_a_token_across_the_answer_boundary_is_left_untrained_with_a_warning(caplog):
    """A tokenizer whose merges join the header's newline with the answer cannot be masked exactly."""
    tok = sentencepiece_like(["assistant\ntzqk"] * 50 + CORPUS)
    with caplog.at_level(logging.WARNING, logger="spiel.data.model_template"):
        enc = encode_with_model_template(CONVERSATIONS[:1], tok)[0]
    straddling = [t for t in tok.convert_ids_to_tokens(enc["input_ids"]) if "\n" in t and len(t) > 1]
    assert straddling and "merges a token across the boundary" in caplog.text
    trained = tok.convert_ids_to_tokens(
        [t for t, label in zip(enc["input_ids"], enc["labels"], strict=True) if label != IGNORE_INDEX]
    )
    assert not any("\n" in t for t in trained) and trained[-1] == "<|im_end|>"


def test_a_tokenizer_without_a_template_or_with_a_non_prefix_one_is_refused():
    from spiel.data.build import build_train_dataset

    tok = byte_level_bpe()
    tok.chat_template = None
    with pytest.raises(DataError, match="has no chat template.*data.template=tulu"):
        build_train_dataset({"template": "model", "sources": [{"name": "demo"}]}, tok, 64)
    tok.chat_template = "{{ messages | length }}: {% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(DataError, match="does not render the turns of a conversation as prefixes"):
        encode_with_model_template(CONVERSATIONS[:1], tok)
    with pytest.raises(DataError, match="template must be tulu .* or model"):
        build_train_dataset({"template": "chatml", "sources": [{"name": "demo"}]}, tok, 64)
