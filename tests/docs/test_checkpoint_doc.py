"""docs/checkpoint-format.md describes the format the code writes: its title's format number is
spiel.checkpoint.format.FORMAT_VERSION, and every header field, module field and tensor field the code knows is
named on the page."""

from __future__ import annotations

import re

from spiel.checkpoint import codec
from spiel.checkpoint.format import FORMAT_VERSION, HEADER_FIELDS, MODULE_FIELDS
from tests.helpers.paths import REPO

PAGE = REPO / "docs" / "checkpoint-format.md"


def test_documented_format_version_is_the_code_s():
    title = PAGE.read_text().splitlines()[0]
    documented = re.fullmatch(r"# The checkpoint format \(format (\d+)\)", title)
    assert documented, f"unexpected title {title!r}"
    assert int(documented.group(1)) == FORMAT_VERSION


def test_every_header_and_module_field_is_documented():
    text = PAGE.read_text()
    missing = [name for name in HEADER_FIELDS + MODULE_FIELDS if f"`{name}`" not in text]
    assert not missing, f"{PAGE.name} does not describe {missing}"


def test_every_tensor_field_is_documented():
    text = PAGE.read_text()
    fields = (*codec.FLAT_FIELDS, *codec.OPTIONAL_FIELDS, *codec.COMPACT_FIELDS, *codec.ELIAS_FANO_FIELDS)
    missing = [f for f in fields if f"`M.{f}`" not in text]
    assert not missing, f"{PAGE.name} does not describe {missing}"
