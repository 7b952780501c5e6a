"""Instruction templates for turning (instruction, input, output) triples into a user turn.

Written for spiel, in the spirit of open-instruct's `instruction_encode_templates.py`: many phrasings so
the model does not learn one fixed wrapper, drawn by weight. Each entry is (weight, template); templates
use `{instruction}` and, in the with-input list, `{input}`.
"""

from __future__ import annotations

WITH_INPUT = (
    (1.0, "{instruction}\n\n{input}"),
    (1.0, "{instruction}\n{input}"),
    (1.0, "{input}\n\n{instruction}"),
    (1.0, "Instruction: {instruction}\nInput: {input}"),
    (1.0, "Task: {instruction}\n\nGiven: {input}"),
    (1.0, "{instruction}\n\nHere is the input:\n{input}"),
    (1.0, "Please do the following. {instruction}\n\nInput:\n{input}"),
    (1.0, "Read the text below and respond.\n\n{input}\n\nRequest: {instruction}"),
    (1.0, "{instruction} Use this information:\n{input}"),
    (1.0, "Context:\n{input}\n\nQuestion or task:\n{instruction}"),
    (
        1.0,
        "You are given an instruction and an input.\nInstruction: {instruction}\nInput: {input}\nResponse:",
    ),
    (0.2, "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"),
)

WITHOUT_INPUT = (
    (1.0, "{instruction}"),
    (1.0, "{instruction}\n"),
    (1.0, "Instruction: {instruction}"),
    (1.0, "Task: {instruction}"),
    (1.0, "Please help with the following.\n{instruction}"),
    (1.0, "{instruction}\nAnswer:"),
    (1.0, "Complete this request: {instruction}"),
    (1.0, "Here is what I need:\n\n{instruction}"),
    (1.0, "Respond to the instruction below.\n\n{instruction}"),
    (1.0, "Request: {instruction}\nResponse:"),
    (0.2, "### Instruction:\n{instruction}\n\n### Response:"),
)
