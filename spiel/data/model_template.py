"""Training in the model's own chat template (``data.template=model``), with assistant-only labels.

A conversation is rendered by the tokenizer's Jinja template (``apply_chat_template(..., tokenize=False)``)
and the text is tokenized WITHOUT adding special tokens, as serving stacks do (the template writes BOS
itself when it wants one). So the training ids are exactly the ids a server builds from the same
conversation.

Which tokens carry loss: for assistant turn i, the template renders ``messages[:i]`` with the generation
prompt (the text up to where the answer starts) and ``messages[:i+1]`` (up to the end of that turn); both
must be prefixes of the whole conversation's text. The characters between them, trailing whitespace
removed, are the answer and the template's end-of-turn marker (``<|im_end|>``, ``</s>``, ...): a token is
trained when its characters (the tokenizer's offsets) lie inside such a span. A token that straddles a span
boundary (a tokenizer merging the header's last character with the answer's first) cannot be assigned
exactly; it is left untrained and a warning says so once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from spiel.data.errors import DataError

IGNORE_INDEX = -100
log = logging.getLogger(__name__)
_warned: set[str] = set()


def _name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def check_model_template(tokenizer) -> None:
    """DataError unless the tokenizer has a chat template and returns character offsets."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"data.template=model: the tokenizer of {_name(tokenizer)!r} has no chat template; train in "
            "the Tülu format (data.template=tulu) or give the tokenizer one"
        )
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(
            f"data.template=model needs a fast tokenizer (character offsets) for exact label masks; "
            f"{_name(tokenizer)!r} is a slow one"
        )


def _render(tokenizer, messages, generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=generation_prompt
    )


def assistant_spans(messages: Sequence[Mapping], tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans [start, end) of each assistant answer with its
    end-of-turn marker."""
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    text = _render(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head = _render(tokenizer, messages[:i], generation_prompt=True)
        turn = _render(tokenizer, messages[: i + 1]).rstrip()
        if not (text.startswith(head) and text.startswith(turn) and len(head) <= len(turn)):
            raise DataError(
                f"data.template=model: the chat template of {_name(tokenizer)!r} does not render the "
                f"turns of a conversation as prefixes of it (turn {i}), so the answer tokens cannot be "
                "located; train in the Tülu format (data.template=tulu)"
            )
        spans.append((len(head), len(turn)))
    return text, spans


def encode_with_model_template(
    conversations: Sequence[Sequence[Mapping]], tokenizer, max_seq_len: int = 2048
) -> list[dict]:
    """``{"input_ids", "labels"}`` per conversation (see the module doc); right truncation at max_seq_len."""
    rendered = [assistant_spans(messages, tokenizer) for messages in conversations]
    encoded = tokenizer([text for text, _ in rendered], add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for (_, spans), ids, offsets in zip(
        rendered, encoded["input_ids"], encoded["offset_mapping"], strict=True
    ):
        labels = [IGNORE_INDEX] * len(ids)
        for position, (start, end) in enumerate(offsets):
            if end <= start:
                continue  # a token with no characters of its own
            inside = any(a <= start and end <= b for a, b in spans)
            if inside:
                labels[position] = ids[position]
            elif any(start < b and a < end for a, b in spans) and _name(tokenizer) not in _warned:
                _warned.add(_name(tokenizer))
                log.warning(
                    "tokenizer %s merges a token across the boundary of an assistant answer in its chat "
                    "template; such tokens are left untrained",
                    _name(tokenizer),
                )
        out.append({"input_ids": list(ids[:max_seq_len]), "labels": labels[:max_seq_len]})
    return out
