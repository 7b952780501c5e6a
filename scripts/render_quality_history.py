"""Render the tables of docs/quality-history.md from docs/quality_demo.json (the recorded demo-task runs).

    python scripts/render_quality_history.py            # rewrite the tables in docs/quality-history.md
    python scripts/render_quality_history.py --check    # exit 1 if the page differs from the JSON

The JSON bundles the result files of several `scripts/bench_quality.py` invocations (`files`: name -> its
`--json` output). The page's tables sit between `<!-- tables:NAME -->` and `<!-- /tables:NAME -->` markers.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from spiel.bench.report import label, protocol_rows, protocol_table
from spiel.paths import REPO_ROOT

JSON_PATH = REPO_ROOT / "docs" / "quality_demo.json"
PAGE = REPO_ROOT / "docs" / "quality-history.md"
# The fair-protocol study; quality_demo_default (the shipped demo setting) is a table of its own.
PROTOCOL_FILES = ("quality_base", "quality_sparse", "quality_ma", "quality_variants")


def _merge(files: dict, names) -> tuple[list[dict], list[str], dict | None]:
    runs, methods, base = [], [], None
    for name in names:
        data = files[name]
        runs += data["runs"]
        methods += [m for m in data["config"]["methods"] if m not in methods]
        base = base or data["config"].get("base")
    return runs, methods, base


def search_table(runs: list[dict], methods: list[str]) -> str:
    """Every searched point (seed 0): its validation exact match and loss and its training loss."""
    lines = [
        "| method | lr | λ | lr·λ | val EM | val loss | train loss |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in methods:
        for r in sorted(
            (r for r in runs if r["method"] == m and r["stage"] == "search"),
            key=lambda r: (r["lr"], r["weight_decay"]),
        ):
            lines.append(
                f"| {label(m)} | {r['lr']:g} | {r['weight_decay']:g} | {r['lr'] * r['weight_decay']:.2g} | "
                f"{r['val_exact_match']:.3f} | {r['val_loss']:.3f} | {r['train_loss']:.3f} |"
            )
    return "\n".join(lines)


def render(bundle: dict) -> dict[str, str]:
    """The page's tables by marker name."""
    files = bundle["files"]
    runs, methods, base = _merge(files, PROTOCOL_FILES)
    shipped_runs, shipped_methods, shipped_base = _merge(files, ["quality_demo_default"])
    return {
        "protocol": protocol_table(protocol_rows(runs, methods, base)),
        "search": search_table(runs, methods),
        "shipped": protocol_table(protocol_rows(shipped_runs, shipped_methods, shipped_base)),
    }


def fill(page: str, tables: dict[str, str]) -> str:
    for name, table in tables.items():
        pattern = re.compile(rf"(<!-- tables:{name} -->\n).*?(<!-- /tables:{name} -->)", re.S)
        if not pattern.search(page):
            raise SystemExit(f"{PAGE}: no <!-- tables:{name} --> ... <!-- /tables:{name} --> markers")
        page = pattern.sub(lambda m, t=table: m.group(1) + t + "\n" + m.group(2), page)
    return page


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if the page is stale")
    args = parser.parse_args(argv)
    page = PAGE.read_text()
    new = fill(page, render(json.loads(JSON_PATH.read_text())))
    if args.check:
        if new != page:
            print(
                f"{PAGE} differs from {JSON_PATH}: run python scripts/render_quality_history.py",
                file=sys.stderr,
            )
            return 1
        return 0
    PAGE.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
