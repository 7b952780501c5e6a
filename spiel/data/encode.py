"""Tokenization with label masking: only assistant content and its EOS are trained.

Follows open-instruct's `encode_with_messages_format` (Tülu v2 era): the whole Tülu text is tokenized
once with right truncation at `max_seq_len` (the tokenizer adds BOS if it is configured to; EOS is
written as literal text and becomes the special token), and the trainable spans are located by
re-tokenizing prefixes of the text. One deliberate difference: the "\\n" after an intermediate
assistant turn's EOS is masked too (open-instruct made the same change later, PR #376), so exactly
the assistant content tokens and their EOS carry loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from spiel.data.template import ASSISTANT_HEADER, render_messages, render_turn

IGNORE_INDEX = -100


def _eos(tokenizer) -> str:
    eos = getattr(tokenizer, "eos_token", None)
    if not eos:
        raise ValueError("the tokenizer has no eos_token; the Tülu template needs one to end assistant turns")
    return eos


def _n_tokens(tokenizer, text: str, max_seq_len: int) -> int:
    return len(tokenizer(text, max_length=max_seq_len, truncation=True)["input_ids"])


def encode_messages(messages: Sequence[Mapping], tokenizer, max_seq_len: int = 2048) -> dict:
    """Tokenize a conversation; returns {"input_ids", "labels"} with labels -100 where no loss is taken.

    The result may have no trainable label at all (truncated before the first assistant token); the
    dataset builder drops and counts such examples.
    """
    eos = _eos(tokenizer)
    input_ids = list(tokenizer(render_messages(messages, eos), max_length=max_seq_len, truncation=True)["input_ids"])
    labels = [IGNORE_INDEX] * len(input_ids)
    prefix = ""
    for message in messages:
        if message["role"] == "assistant":
            head = prefix + ASSISTANT_HEADER
            start = _n_tokens(tokenizer, head, max_seq_len)
            if start >= len(input_ids):
                break  # this turn (and all later ones) lie past the truncation point
            end = _n_tokens(tokenizer, head + message["content"].strip() + eos, max_seq_len)
            labels[start:end] = input_ids[start:end]
        prefix += render_turn(message, eos)
    return {"input_ids": input_ids, "labels": labels}


def encode_prompt_completion(prompt: str, completion: str, tokenizer, max_seq_len: int = 2048) -> dict:
    """The prompt/completion format: `prompt [+ " "] + completion + EOS`, loss on the completion part."""
    eos = _eos(tokenizer)
    join = "" if prompt[-1:].isspace() or completion[:1].isspace() else " "
    text = prompt + join + completion + eos
    input_ids = list(tokenizer(text, max_length=max_seq_len, truncation=True)["input_ids"])
    n_prompt = _n_tokens(tokenizer, prompt, max_seq_len)
    labels = [IGNORE_INDEX] * min(n_prompt, len(input_ids)) + input_ids[n_prompt:]
    return {"input_ids": input_ids, "labels": labels}


def has_trainable(labels: Sequence[int]) -> bool:
    return any(label != IGNORE_INDEX for label in labels)


def tokenize_batch(batch: Mapping, tokenizer, max_seq_len: int) -> dict:
    """`datasets.map(batched=True)` function over canonical rows; drops rows with no trainable token.

    A row is a conversation when its `messages` list is non-empty, else a prompt/completion pair.
    Returns fewer rows than it was given when some are dropped (allowed because every input column is
    removed); the caller counts the difference.
    """
    out = {"input_ids": [], "labels": []}
    for i, messages in enumerate(batch["messages"]):
        if messages:
            enc = encode_messages(messages, tokenizer, max_seq_len)
        else:
            enc = encode_prompt_completion(batch["prompt"][i], batch["completion"][i], tokenizer, max_seq_len)
        if has_trainable(enc["labels"]):
            out["input_ids"].append(enc["input_ids"])
            out["labels"].append(enc["labels"])
    return out


__all__ = ["IGNORE_INDEX", "encode_messages", "encode_prompt_completion", "tokenize_batch"]
