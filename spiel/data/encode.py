"""Tokenization with label masking: only assistant content and its EOS are trained.

Follows open-instruct's `encode_with_messages_format` (Tülu v2 era): the whole Tülu text is tokenized
once with right truncation at `max_seq_len` (the tokenizer adds BOS if it is configured to; EOS is
written as literal text and becomes the special token), and the trainable spans are located by
re-tokenizing prefixes of the text. One deliberate difference: the "\\n" after an intermediate
assistant turn's EOS is masked too (open-instruct made the same change later, PR #376), so exactly
the assistant content tokens and their EOS carry loss.

Like the reference, this assumes the tokenizer does not merge tokens across the "\n" that ends the
`<|assistant|>` header (true of LLaMA's sentencepiece and of GPT-style byte-level BPE). A tokenizer that
does would shift the mask; that is detected and warned about once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from spiel.data.template import ASSISTANT_HEADER, render_messages, render_turn

IGNORE_INDEX = -100
logger = logging.getLogger(__name__)
_warned_boundary = False


def _eos(tokenizer) -> str:
    eos = getattr(tokenizer, "eos_token", None)
    if not eos:
        raise ValueError("the tokenizer has no eos_token; the Tülu template needs one to end assistant turns")
    return eos


def _n_tokens(tokenizer, text: str, max_seq_len: int) -> int:
    return len(tokenizer(text, max_length=max_seq_len, truncation=True)["input_ids"])


def _warn_boundary(tokenizer) -> None:
    global _warned_boundary
    if not _warned_boundary:
        _warned_boundary = True
        logger.warning(
            "tokenizer %s merges tokens across the chat template's '<|assistant|>\\n' boundary; "
            "label masks may be shifted by a token there",
            getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__,
        )


def _plan(messages: Sequence[Mapping], eos: str) -> list[str]:
    """The texts to tokenize for one conversation: the full text, then for each assistant turn the
    prefix up to its content (end of the `<|assistant|>\\n` header) and up to its EOS."""
    texts = [render_messages(messages, eos)]
    prefix = ""
    for message in messages:
        if message["role"] == "assistant":
            head = prefix + ASSISTANT_HEADER
            texts += [head, head + message["content"].strip() + eos]
        prefix += render_turn(message, eos)
    return texts


def _assemble(ids: list[list[int]], tokenizer) -> dict:
    """input_ids and labels from the tokenized plan: trainable = [len(head), len(head+content+EOS))."""
    input_ids = list(ids[0])
    labels = [IGNORE_INDEX] * len(input_ids)
    for head_ids, end_ids in zip(ids[1::2], ids[2::2], strict=True):
        start = len(head_ids)
        if start >= len(input_ids):
            break  # this turn (and all later ones) lie past the truncation point
        if input_ids[:start] != list(head_ids):
            _warn_boundary(tokenizer)
        end = len(end_ids)
        labels[start:end] = input_ids[start:end]
    return {"input_ids": input_ids, "labels": labels}


def encode_many(conversations: Sequence[Sequence[Mapping]], tokenizer, max_seq_len: int = 2048) -> list[dict]:
    """`encode_messages` over many conversations with one tokenizer call (fast tokenizers batch in Rust)."""
    eos = _eos(tokenizer)
    plans = [_plan(messages, eos) for messages in conversations]
    flat = [text for plan in plans for text in plan]
    ids = tokenizer(flat, max_length=max_seq_len, truncation=True)["input_ids"] if flat else []
    out, pos = [], 0
    for plan in plans:
        out.append(_assemble(ids[pos : pos + len(plan)], tokenizer))
        pos += len(plan)
    return out


def encode_messages(messages: Sequence[Mapping], tokenizer, max_seq_len: int = 2048) -> dict:
    """Tokenize a conversation; returns {"input_ids", "labels"} with labels -100 where no loss is taken.

    The result may have no trainable label at all (truncated before the first assistant token); the
    dataset builder drops and counts such examples.
    """
    return encode_many([messages], tokenizer, max_seq_len)[0]


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


def tokenize_batch(batch: Mapping, tokenizer, max_seq_len: int, template: str = "tulu") -> dict:
    """`datasets.map(batched=True)` function over canonical rows; drops rows with no trainable token.

    A row is a conversation when its `messages` list is non-empty, else a prompt/completion pair.
    Conversations are rendered in the Tülu format (`template="tulu"`) or the tokenizer's own chat template
    (`"model"`, ``spiel.data.model_template``).
    Returns fewer rows than it was given when some are dropped (allowed because every input column is
    removed); the caller counts the difference.
    """
    rows = range(len(batch["messages"]))
    conv_rows = [i for i in rows if batch["messages"][i]]
    if template == "model":
        from spiel.data.model_template import encode_with_model_template as encode_conversations
    else:
        encode_conversations = encode_many
    encoded = dict(
        zip(
            conv_rows,
            encode_conversations([batch["messages"][i] for i in conv_rows], tokenizer, max_seq_len),
            strict=True,
        )
    )
    out = {"input_ids": [], "labels": []}
    for i in rows:
        enc = encoded.get(i)
        if enc is None:
            enc = encode_prompt_completion(batch["prompt"][i], batch["completion"][i], tokenizer, max_seq_len)
        if has_trainable(enc["labels"]):
            out["input_ids"].append(enc["input_ids"])
            out["labels"].append(enc["labels"])
    return out


__all__ = ["IGNORE_INDEX", "encode_many", "encode_messages", "encode_prompt_completion", "tokenize_batch"]
