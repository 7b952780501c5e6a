"""Wall time of scoring a full HumanEval run (164 problems x N samples) in the code sandbox.

    python scripts/bench_humaneval_sandbox.py --samples 20 --workers 2 [--json out.json]

Every problem gets N completions: its canonical solution for the first half of the samples and an empty
completion for the rest (a realistic mix of passing and failing programs). Reports the wall time, the
programs per second and pass@1, which must be 0.5 (checks the scorer while timing it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

from spiel.eval.humaneval import load_problems, score_completions
from spiel.eval.sandbox import SandboxLimits


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--limit", type=int, default=None, help="first N problems only")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    problems = load_problems()[: args.limit] if args.limit else load_problems()
    half = args.samples // 2
    completions = [[p["canonical_solution"]] * half + [""] * (args.samples - half) for p in problems]
    start = time.perf_counter()
    out = score_completions(problems, completions, SandboxLimits(), n_workers=args.workers)
    wall = time.perf_counter() - start
    n = out["metrics"]["num_samples"]
    result = {
        "problems": len(problems),
        "samples": args.samples,
        "programs": n,
        "workers": args.workers,
        "wall_s": round(wall, 1),
        "programs_per_s": round(n / wall, 2),
        "pass@1": out["metrics"]["pass@1"],
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    expected = half / args.samples
    if abs(out["metrics"]["pass@1"] - expected) > 1e-9:
        bad = [
            (r["task_id"], r["result"]) for r in out["predictions"] if r["passed"] != (r["completion"] != "")
        ]
        print(f"pass@1 {out['metrics']['pass@1']} != {expected}; first wrong: {bad[:5]}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
