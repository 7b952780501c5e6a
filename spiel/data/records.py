"""Recognizing and checking raw records, and turning them into the canonical form.

Canonical conversation (Tülu v2): {"dataset", "id", "messages": [{"role", "content"}]}.
Canonical prompt/completion: {"dataset", "id", "prompt", "completion"} (encoded without the chat
template, as open-instruct does for that format).

Checkers raise `RecordError`, whose `kind` is the short reason used in the drop counts.
"""

from __future__ import annotations

from collections.abc import Mapping

from spiel.data.convert import alpaca_to_messages, flan_to_messages
from spiel.data.template import ROLES

# Raw formats, in the order auto-detection tries them (by the keys a record has).
FORMATS = ("messages", "prompt_completion", "flan_v2", "alpaca")
_FORMAT_KEYS = {
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "flan_v2": ("inputs", "targets"),
    "alpaca": ("instruction", "output"),
}


class RecordError(ValueError):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def detect_format(record: Mapping) -> str:
    for fmt in FORMATS:
        if all(k in record for k in _FORMAT_KEYS[fmt]):
            return fmt
    raise RecordError(
        "unknown_format",
        f"record has none of the known field sets (messages | prompt+completion | inputs+targets | "
        f"instruction+output); its keys are {sorted(record)}",
    )


def check_messages(messages) -> None:
    """Raise RecordError unless `messages` is a non-empty list of {role, content} with an assistant turn."""
    if not isinstance(messages, list):
        raise RecordError("bad_messages", f"'messages' must be a list, got {type(messages).__name__}")
    if not messages:
        raise RecordError("empty_messages", "conversation has no messages ('messages' is empty)")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise RecordError("bad_messages", f"message {i} is a {type(m).__name__}, not an object")
        role = m.get("role")
        if role not in ROLES:
            raise RecordError(
                "unknown_role", f"message {i} has unknown role {role!r}; expected one of {', '.join(ROLES)}"
            )
        content = m.get("content")
        if not isinstance(content, str):
            raise RecordError("bad_messages", f"message {i} ({role}) has no string 'content'")
        # An empty system prompt is harmless; an empty user or assistant turn is a broken record.
        if role != "system" and not content.strip():
            raise RecordError("empty_message", f"message {i} ({role}) is empty")
    if not any(m["role"] == "assistant" for m in messages):
        raise RecordError("no_assistant", "conversation has no assistant turn, so nothing would be trained")


def _str_field(record: Mapping, key: str, allow_empty: bool = False) -> str:
    value = record.get(key)
    if value is None and allow_empty:
        return ""
    if not isinstance(value, str):
        raise RecordError("bad_field", f"field {key!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise RecordError("empty_field", f"field {key!r} is empty")
    return value


def to_canonical(record, fmt: str, index: int, dataset: str, seed: int = 42) -> dict:
    """One raw record (of format `fmt`, or "auto") as a canonical dict; `index` numbers it in its source."""
    if not isinstance(record, Mapping):
        raise RecordError("bad_record", f"record is a {type(record).__name__}, not a JSON object")
    if fmt == "auto":
        fmt = detect_format(record)
    elif fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")
    if fmt == "prompt_completion":
        prompt, completion = _str_field(record, "prompt"), _str_field(record, "completion")
        rid = str(record.get("id", f"{dataset}_{index}"))
        return {
            "dataset": str(record.get("dataset", dataset)),
            "id": rid,
            "prompt": prompt,
            "completion": completion,
        }
    if fmt == "messages":
        messages = record.get("messages")
        check_messages(messages)
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        rid = str(record.get("id", f"{dataset}_{index}"))
        return {"dataset": str(record.get("dataset", dataset)), "id": rid, "messages": messages}
    if fmt == "flan_v2":
        out = flan_to_messages(_str_field(record, "inputs"), _str_field(record, "targets"), index)
    else:
        out = alpaca_to_messages(
            _str_field(record, "instruction"),
            _str_field(record, "input", allow_empty=True),
            _str_field(record, "output"),
            index,
            seed=seed,
        )
    check_messages(out["messages"])
    return out
