"""Giving a tokenizer the Tülu chat template training used, checked token for token.

    attach_chat_template(tokenizer)          # sets tokenizer.chat_template, or raises ChatTemplateError
    attach_chat_template_or_warn(tokenizer)  # spiel-train's final/: a warning instead of an error

Serving stacks (transformers' `apply_chat_template`, vLLM, TGI) render the Jinja template and tokenize
the text WITHOUT adding special tokens. The template therefore writes BOS itself when the tokenizer adds
one in training, and the result is only right if tokenizing "<s>" + text equals tokenizing text with BOS
added. That holds for byte-level BPE and for LLaMA-2's sentencepiece-style tokenizer (a "▁" is prepended
to every piece of text between special tokens), but not for a tokenizer that prepends "▁" only at the
very start of the input. So every attachment renders a few conversations both ways and compares the ids.
"""

from __future__ import annotations

import logging

from spiel.data.encode import encode_messages
from spiel.data.template import chat_prompt, jinja_chat_template

log = logging.getLogger(__name__)

# Conversations the check renders: system turn, several turns, whitespace that the template strips,
# non-ASCII text, a role marker and "</s>" inside content, and an answer ending in a newline.
CHECK_CONVERSATIONS = [
    [{"role": "user", "content": "Reverse the letters of kqzt."}, {"role": "assistant", "content": "tzqk"}],
    [
        {"role": "system", "content": "  Be brief. "},
        {"role": "user", "content": "Hi\n"},
        {"role": "assistant", "content": " Hello!\n"},
        {"role": "user", "content": "Été, 漢字 and <|user|> or </s>?"},
        {"role": "assistant", "content": "1 2  3\n\nfour"},
    ],
]


class ChatTemplateError(ValueError):
    """The tokenizer cannot carry a chat template that renders what training saw."""


def _adds_bos(tokenizer) -> bool:
    """Whether tokenizing text adds BOS in front; any other special token added is refused."""
    text = "Reverse abc."
    plain = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(text)["input_ids"])
    if full == plain:
        return False
    if tokenizer.bos_token_id is not None and full == [tokenizer.bos_token_id, *plain]:
        return True
    raise ChatTemplateError(
        f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} adds special tokens other than a leading BOS "
        f"({plain} -> {full}); a chat template cannot reproduce the ids spiel trains on"
    )


def template_mismatch(tokenizer) -> str | None:
    """None when `tokenizer.chat_template` renders CHECK_CONVERSATIONS to the ids spiel trains on
    (`encode_messages`) and prompts to the ids spiel-eval generates from (`chat_prompt`); else what differs."""
    for messages in CHECK_CONVERSATIONS:
        expected = encode_messages(messages, tokenizer, max_seq_len=1 << 20)["input_ids"]
        got = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        if list(got) != list(expected):
            return f"conversation {messages!r}: template ids {list(got)} != training ids {list(expected)}"
        prompt_expected = tokenizer(chat_prompt(messages, eos_token=tokenizer.eos_token))["input_ids"]
        prompt_got = tokenizer.apply_chat_template(
            messages[:-1], tokenize=True, return_dict=True, add_generation_prompt=True
        )["input_ids"]
        if list(prompt_got) != list(prompt_expected):
            return f"generation prompt of {messages!r}: template ids {list(prompt_got)} != {list(prompt_expected)}"
    return None


def attach_chat_template(tokenizer):
    """Set the Tülu template on `tokenizer` (replacing any other) and check it; ChatTemplateError if the
    rendered ids differ from training's (the tokenizer's template is then left unset)."""
    if not getattr(tokenizer, "eos_token", None):
        raise ChatTemplateError(
            "the tokenizer has no eos_token; the Tülu template ends assistant turns with it"
        )
    tokenizer.chat_template = jinja_chat_template(bos=_adds_bos(tokenizer))
    problem = template_mismatch(tokenizer)
    if problem is not None:
        tokenizer.chat_template = None
        raise ChatTemplateError(
            "the Tülu chat template does not render token for token what spiel trains on with this tokenizer "
            f"(its text is tokenized differently after a literal BOS): {problem}"
        )
    return tokenizer


def attach_chat_template_or_warn(tokenizer) -> bool:
    """`attach_chat_template`, but a mismatch is logged and the tokenizer saved without a template."""
    try:
        attach_chat_template(tokenizer)
        return True
    except ChatTemplateError as e:
        log.warning("the saved tokenizer gets no chat template: %s", e)
        return False
