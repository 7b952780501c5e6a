"""Build a Table-1-style markdown table from spiel-eval run directories.

    python scripts/collect_results.py outputs/eval multirun/eval > results.md
    python scripts/collect_results.py runs/*/ --out results.md

Every directory given is searched recursively for `run_info.json` + `metrics.json` (what spiel-eval
writes). One row per label (eval's `label=`, else derived from the checkpoint), one column per benchmark
that has a table column (``BENCHMARK.column``; each its headline metric in percent): the paper's five (MMLU,
GSM, BBH, TyDiQA, HumanEval) always, plus their mean when a row has all five (the paper's "Avg."), and the
others (the demo) when some run has them. When a label has several runs of one benchmark, the most recent one
is used and the others are reported on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spiel.eval.benchmark import benchmarks
from spiel.eval.runner import headline

COLUMNS = [(b.name, b.title) for b in benchmarks().values() if b.column is not None and b.in_average]
EXTRA = [(b.name, b.title) for b in benchmarks().values() if b.column is not None and not b.in_average]


def find_runs(roots: list[Path]) -> list[dict]:
    runs = []
    for root in roots:
        for info_path in sorted(Path(root).rglob("run_info.json")):
            metrics_path = info_path.with_name("metrics.json")
            if not metrics_path.is_file():
                continue
            info = json.loads(info_path.read_text())
            metrics = json.loads(metrics_path.read_text())
            runs.append(
                {
                    "dir": str(info_path.parent),
                    "label": info.get("label") or info_path.parent.name,
                    "bench": info.get("bench"),
                    "finished": info.get("finished", ""),
                    "value": headline(info.get("bench"), metrics),
                }
            )
    return runs


def build_table(runs: list[dict], digits: int = 1) -> str:
    table: dict[str, dict[str, dict]] = {}
    for run in sorted(runs, key=lambda r: r["finished"]):
        row = table.setdefault(run["label"], {})
        if run["bench"] in row:
            print(
                f"note: {run['label']} / {run['bench']}: using {run['dir']} over {row[run['bench']]['dir']}",
                file=sys.stderr,
            )
        row[run["bench"]] = run
    columns = COLUMNS + [c for c in EXTRA if any(c[0] in row for row in table.values())]
    header = "| Model | " + " | ".join(title for _, title in columns) + " | Avg. |"
    lines = [header, "|" + "---|" * (len(columns) + 2)]
    for label, row in table.items():
        cells, main = [], []
        for bench, _ in columns:
            value = row.get(bench, {}).get("value")
            cells.append("–" if value is None else f"{value:.{digits}f}")
            if bench in dict(COLUMNS) and value is not None:
                main.append(value)
        avg = f"{sum(main) / len(main):.{digits}f}" if len(main) == len(COLUMNS) else "–"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {avg} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run directories or folders holding them")
    parser.add_argument("--out", type=Path, help="write the table here (default: stdout)")
    parser.add_argument("--digits", type=int, default=1)
    args = parser.parse_args(argv)
    runs = find_runs(args.dirs)
    if not runs:
        sys.exit(f"no spiel-eval runs (run_info.json + metrics.json) under {[str(d) for d in args.dirs]}")
    table = build_table(runs, args.digits)
    if args.out:
        args.out.write_text(table)
    else:
        sys.stdout.write(table)


if __name__ == "__main__":
    main()
