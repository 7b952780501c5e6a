"""The Tülu chat template (open-instruct `encode_with_messages_format`, Tülu v2 era).

Training text for a conversation::

    <|system|>\\n{system}\\n<|user|>\\n{user}\\n<|assistant|>\\n{assistant}</s>\\n ...

with every content `.strip()`-ed, and the whole string `.strip()`-ed at the end (which only removes
the final "\\n"). EOS is written as literal text; the tokenizer turns it into the special token.

This module is pure string work (no tokenizer, no torch), so evaluation code can import it cheaply.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

ROLES = ("system", "user", "assistant")
ASSISTANT_HEADER = "<|assistant|>\n"
DEFAULT_EOS = "</s>"


def render_turn(message: Mapping, eos_token: str = DEFAULT_EOS) -> str:
    """One message as a template block, including its trailing newline."""
    role = message.get("role")
    content = message.get("content")
    if not isinstance(content, str):
        raise ValueError(f"message content must be a string, got {type(content).__name__} (role {role!r})")
    if role == "system":
        return "<|system|>\n" + content.strip() + "\n"
    if role == "user":
        return "<|user|>\n" + content.strip() + "\n"
    if role == "assistant":
        return ASSISTANT_HEADER + content.strip() + eos_token + "\n"
    raise ValueError(f"unknown message role {role!r}; expected one of {', '.join(ROLES)}")


def concat_messages(messages: Sequence[Mapping], eos_token: str = DEFAULT_EOS) -> str:
    """The blocks joined, *without* the final strip (prefixes of the training text are built from this)."""
    return "".join(render_turn(m, eos_token) for m in messages)


def render_messages(messages: Sequence[Mapping], eos_token: str = DEFAULT_EOS) -> str:
    """The full Tülu training text of a conversation."""
    return concat_messages(messages, eos_token).strip()


def chat_prompt(messages: Sequence[Mapping], eos_token: str = DEFAULT_EOS) -> str:
    """The text a model is given to generate the next assistant turn.

    A trailing assistant message (the reference answer, when given) is left out; the remaining turns are
    rendered and followed by "<|assistant|>\\n" -- exactly the training text that precedes assistant
    content, so a fine-tuned model sees at generation time what it saw in training. No BOS is added
    here: the tokenizer adds it.
    """
    messages = list(messages)
    if messages and messages[-1].get("role") == "assistant":
        messages = messages[:-1]
    return concat_messages(messages, eos_token) + ASSISTANT_HEADER


# The same format as Jinja, for `tokenizer.chat_template` (serving stacks render it and tokenize the
# result WITHOUT adding special tokens, so the template writes BOS itself when the tokenizer adds one in
# training). Without add_generation_prompt: `render_messages`; with it: `chat_prompt`. Jinja's `trim` is
# Python's `str.strip()`. `spiel.data.chat_template` checks a tokenizer renders it token for token.
_JINJA_TURNS = (
    "{%- set ns = namespace(text='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- set ns.text = ns.text + '<|system|>\\n' + (message['content'] | trim) + '\\n' -%}"
    "{%- elif message['role'] == 'user' -%}"
    "{%- set ns.text = ns.text + '<|user|>\\n' + (message['content'] | trim) + '\\n' -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- set ns.text = ns.text + '<|assistant|>\\n' + (message['content'] | trim) + eos_token + '\\n' -%}"
    "{%- else -%}"
    "{{- raise_exception('unknown role: ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


def jinja_chat_template(bos: bool = True) -> str:
    """The Tülu template as Jinja; `bos`: start with the tokenizer's BOS (tokenizers that add one)."""
    start = "bos_token + " if bos else ""
    return (
        _JINJA_TURNS
        + "{%- if add_generation_prompt -%}"
        + "{{- "
        + start
        + "ns.text + '<|assistant|>\\n' -}}"
        + "{%- else -%}"
        + "{{- "
        + start
        + "(ns.text | trim) -}}"
        + "{%- endif -%}"
    )
