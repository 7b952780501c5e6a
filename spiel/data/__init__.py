"""Instruction data: sources, the Tülu chat template, label masking and mixtures."""

from spiel.data.template import chat_prompt, render_messages

__all__ = ["chat_prompt", "render_messages"]
