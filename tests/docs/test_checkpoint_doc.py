"""docs/checkpoint-format.md describes the format the code writes: its title's format number is
spiel.checkpoint.format.FORMAT_VERSION, and every tensor field the reader accepts is named on the page."""

from __future__ import annotations

import re

from spiel.checkpoint import format as checkpoint_format
from spiel.checkpoint import read
from tests.helpers.paths import REPO

PAGE = REPO / "docs" / "checkpoint-format.md"


def test_documented_format_version_is_the_code_s():
    title = PAGE.read_text().splitlines()[0]
    documented = re.fullmatch(r"# The checkpoint format \(format (\d+)\)", title)
    assert documented, f"unexpected title {title!r}"
    assert int(documented.group(1)) == checkpoint_format.FORMAT_VERSION


def test_every_tensor_field_is_documented():
    text = PAGE.read_text()
    fields = (*read.REQUIRED_FIELDS, *read.OPTIONAL_FIELDS, *read.COMPACT_FIELDS, *read.ELIAS_FANO_FIELDS)
    missing = [f for f in fields if f"`M.{f}`" not in text]
    assert not missing, f"{PAGE.name} does not describe {missing}"
