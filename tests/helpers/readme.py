"""The README's fenced code blocks, read the way a reader copies them: Python blocks whole, shell blocks as
one command a line (comments dropped)."""

from __future__ import annotations

import re
import shlex
from importlib.metadata import entry_points

from tests.helpers.paths import REPO

README = REPO / "README.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def code_blocks(language: str, text: str | None = None) -> list[str]:
    text = README.read_text() if text is None else text
    return [body for lang, body in FENCE.findall(text) if lang == language]


def commands(block: str) -> list[list[str]]:
    return [argv for line in block.splitlines() if (argv := shlex.split(line, comments=True))]


def console_modules() -> dict[str, str]:
    """Installed console script -> its module (``spiel-train`` -> ``spiel.cli.train``)."""
    return {
        ep.name: ep.module for ep in entry_points(group="console_scripts") if ep.name.startswith("spiel-")
    }
