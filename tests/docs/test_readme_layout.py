"""The README is a first page: at most 250 lines, the set-up and the first training and evaluation commands on
its first screen, and every link from it (and from docs/) to a file of the repository resolves, anchors too."""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers.paths import REPO
from tests.helpers.readme import FENCE, README, commands

MAX_LINES = 250
FIRST_SCREEN = 30  # lines
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#+ (.+)$", re.M)


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{page.name}: {target} (no such file)")
        elif anchor and anchor not in {_slug(h) for h in HEADING.findall(file.read_text())}:
            broken.append(f"{page.name}: {target} (no such heading)")
    return broken


def test_readme_fits_the_limit():
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_LINES, f"README.md has {lines} lines (limit {MAX_LINES}): move detail into docs/"


def test_first_screen_shows_setup_train_and_eval():
    text = README.read_text()
    first = FENCE.search(text)
    assert first and first.group(1) == "bash", "the README's first code block is the quick start (bash)"
    assert text[: first.end()].count("\n") <= FIRST_SCREEN, f"the quick start ends past line {FIRST_SCREEN}"
    quick_start = commands(first.group(2))
    assert [argv[0] for argv in quick_start] == ["make", "spiel-train", "spiel-eval"]
    assert quick_start[0] == ["make", "setup"]


def test_links_resolve():
    pages = [README, *sorted((REPO / "docs").glob("*.md"))]
    broken = [b for page in pages for b in _broken_links(page)]
    assert not broken, "\n".join(broken)


def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / "there.md").write_text("# A heading (`with code`)\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md#a-heading-with-code) [gone](missing.md) [bad](there.md#nope) [web](https://x.org)"
    )
    assert _broken_links(page) == [
        "page.md: missing.md (no such file)",
        "page.md: there.md#nope (no such heading)",
    ]


def test_slug_matches_github():
    assert _slug("What fits (`spiel-plan`)") == "what-fits-spiel-plan"
    assert (
        _slug("Gather-gradient (the values' gradient of one layer)")
        == "gather-gradient-the-values-gradient-of-one-layer"
    )
