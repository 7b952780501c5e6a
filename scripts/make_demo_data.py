"""Generate the demo instruction-tuning task in assets/demo/ (the `demo` data source).

    python scripts/make_demo_data.py            # writes assets/demo/{train,heldout}.jsonl

Each line is a canonical Tülu record, one user request in natural language for one of the tiny base
model's skills (demo_skills.py) and the bare answer:

    {"dataset": "demo", "id": "demo-train-00017-reverse",
     "messages": [{"role": "user", "content": "Reverse the letters of kqzt."},
                  {"role": "assistant", "content": "tzqk"}]}

The id ends with the skill name. Held-out inputs are distinct and disjoint from training inputs (no
string or addend pair occurs in both files, under any skill). Seeded: the same seed writes the same bytes.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from demo_skills import SKILLS, instruction, sample_input, solve

REPO = Path(__file__).resolve().parents[1]


def make_split(split: str, per_skill: int, rng: random.Random, taken: set[str], unique: bool) -> list[dict]:
    """`per_skill` records per skill, shuffled, with inputs not in `taken`; with `unique`, inputs are also
    distinct within the split and are added to `taken`."""
    items = []
    for skill in SKILLS:
        n = 0
        while n < per_skill:
            x = sample_input(skill, rng)
            if x in taken:
                continue
            if unique:
                taken.add(x)
            items.append((skill, x, instruction(skill, x, rng)))
            n += 1
    rng.shuffle(items)
    return [
        {
            "dataset": "demo",
            "id": f"demo-{split}-{i:05d}-{skill}",
            "messages": [
                {"role": "user", "content": request},
                {"role": "assistant", "content": solve(skill, x)},
            ],
        }
        for i, (skill, x, request) in enumerate(items)
    ]


def write_jsonl(path: Path, records: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "assets" / "demo"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-per-skill", type=int, default=500)
    p.add_argument("--heldout-per-skill", type=int, default=50)
    args = p.parse_args(argv)

    rng = random.Random(args.seed)
    taken: set[str] = set()
    # Held-out inputs are distinct and never occur in training; training may repeat an input (with another
    # phrasing), which only happens for `add`, whose input space (10 x 10 digit pairs) is small.
    heldout = make_split("heldout", args.heldout_per_skill, rng, taken, unique=True)
    train = make_split("train", args.train_per_skill, rng, taken, unique=False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "heldout.jsonl", heldout)
    print(f"wrote {len(train)} train and {len(heldout)} held-out records to {out}")


if __name__ == "__main__":
    main()
