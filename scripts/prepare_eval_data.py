"""Fetch the evaluation benchmarks and lay them out where spiel-eval reads them (needs internet).

    python scripts/prepare_eval_data.py --data-dir data/eval                 # every benchmark with sources
    python scripts/prepare_eval_data.py --data-dir data/eval --bench mmlu gsm
    python scripts/prepare_eval_data.py --data-dir data/eval --archive-dir ~/dl   # use files downloaded elsewhere
    python scripts/prepare_eval_data.py --data-dir data/eval --check         # verify what is there

Each benchmark names its sources, its layout under --data-dir and its check in its module
(``spiel/eval/<name>.py``, ``BENCHMARK``): mmlu (data.tar), gsm (test.jsonl), bbh (BIG-Bench-Hard-main.zip),
tydiqa (tydiqa-goldp-v1.1-{dev,train}.json). HumanEval, demo and lm_eval need nothing here. With
--archive-dir, a file of that name found there is used instead of downloading it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path

from spiel.eval.benchmark import benchmarks, copy_files, get_benchmark


def fetch(url: str, dest: Path, archive_dir: Path | None = None) -> Path:
    name = dest.name
    if archive_dir is not None and (archive_dir / name).is_file():
        shutil.copy(archive_dir / name, dest)
        print(f"  using {archive_dir / name}")
        return dest
    print(f"  downloading {url}")
    tmp = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(url, timeout=120) as response, open(tmp, "wb") as f:
        shutil.copyfileobj(response, f)
    tmp.replace(dest)
    return dest


def fetched(bench: str) -> bool:
    """Whether `bench` has files to fetch (the others need nothing here)."""
    return bool(get_benchmark(bench).sources)


def prepare(bench: str, data_dir: Path, archive_dir: Path | None = None) -> None:
    print(f"{bench}:")
    spec = get_benchmark(bench)
    if not spec.sources:
        print("  nothing to do: its data ships with spiel or a package")
        return
    with tempfile.TemporaryDirectory() as tmp:
        files = [fetch(url, Path(tmp) / name, archive_dir) for url, name in spec.sources]
        if spec.lay_out is not None:
            spec.lay_out(files, data_dir)
        else:
            copy_files(bench, files, data_dir)


def check(bench: str, data_dir: Path) -> list[str]:
    """Problems with the data of `bench` under `data_dir` (empty when it looks complete)."""
    verify = get_benchmark(bench).verify
    return verify(data_dir) if verify is not None else []


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data/eval"))
    parser.add_argument(
        "--bench", nargs="+", default=[b for b in benchmarks() if fetched(b)], choices=list(benchmarks())
    )
    parser.add_argument("--archive-dir", type=Path, help="use already-downloaded files found here")
    parser.add_argument("--check", action="store_true", help="only verify the data already in --data-dir")
    args = parser.parse_args(argv)
    if not args.check:
        for bench in args.bench:
            prepare(bench, args.data_dir, args.archive_dir)
    problems = [p for bench in args.bench for p in check(bench, args.data_dir)]
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    if not problems:
        print(f"ok: {', '.join(args.bench)} under {args.data_dir}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
