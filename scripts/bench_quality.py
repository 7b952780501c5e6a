#!/usr/bin/env python
"""Mini-Table 1 on a CPU: full FT, LoRA, (IA)3, SpIEL-AG, SpIEL-MA and a static sparse baseline (SpIEL's
layer with its random indices never reselected) fine-tuned on the demo task from the tiny base.

Every method gets the same steps, batch size, data order and seed; LoRA and the sparse methods the same
parameter budget (LoRA rank r = SpIEL rank-equivalent r, r from the paper's density, 2.47% of the target
weights). Each method's learning rate is picked from a small grid on a validation split of the training
file (highest validation exact match, then lowest validation loss), as the paper's Appendix D picks on a
development set; the table reports the picked run's held-out exact match and answer-token loss.

    python scripts/bench_quality.py --json bench_quality.json --png docs/bench_quality.png   # ~20 min, 2 cores
    python scripts/bench_quality.py --steps 20 --val 40 --heldout-limit 40 --lr-factors 1   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from spiel.bench.models import LlamaShape, equivalent_rank, parse_methods  # noqa: E402
from spiel.bench.quality import (  # noqa: E402
    LR_FACTORS,
    QUALITY_METHODS,
    QualityJob,
    answer_loss,
    encode,
    lr_grid,
    pick,
    run_job,
    split_records,
)
from spiel.bench.report import quality_chart, quality_table  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=",".join(QUALITY_METHODS))
    p.add_argument("--steps", type=int, default=170, help="optimizer steps (170 × 16 ≈ one epoch)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--val", type=int, default=300, help="training records held out for picking the lr")
    p.add_argument("--heldout-limit", type=int, default=None, help="score only the first N held-out records")
    p.add_argument("--lr-factors", default=",".join(f"{f:.4g}" for f in LR_FACTORS),
                   help="grid = the paper's lr (Table 4) × 10 × these")
    p.add_argument("--rank", type=int, default=None, help="LoRA rank / SpIEL rank_equiv (default: paper density)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="training processes at once (1 thread each)")
    p.add_argument("--json", default=None)
    p.add_argument("--png", default=None)
    return p.parse_args(argv)


def tiny_shape() -> LlamaShape:
    from transformers import AutoConfig

    from spiel.testing import TINY_MODEL_DIR

    c = AutoConfig.from_pretrained(TINY_MODEL_DIR)
    return LlamaShape(hidden=c.hidden_size, intermediate=c.intermediate_size, layers=c.num_hidden_layers,
                      heads=c.num_attention_heads, kv_heads=c.num_key_value_heads, vocab=c.vocab_size)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from spiel.eval.demo import DEMO_HELDOUT, evaluate_demo, load_demo
    from spiel.testing import DEMO_DIR, tiny_model, tiny_tokenizer

    methods = parse_methods(args.methods, QUALITY_METHODS)
    factors = [float(f) for f in args.lr_factors.split(",")]
    rank = args.rank or equivalent_rank(tiny_shape())
    tokenizer = tiny_tokenizer()
    train_records, val_records = split_records(load_demo(DEMO_DIR / "train.jsonl"), args.val, args.seed)
    train = encode(train_records, tokenizer)
    heldout_path = DEMO_HELDOUT
    tmp_heldout = None
    if args.heldout_limit:
        import tempfile

        tmp_heldout = tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False)
        tmp_heldout.write("".join(json.dumps(r) + "\n" for r in load_demo(DEMO_HELDOUT, args.heldout_limit)))
        tmp_heldout.close()
        heldout_path = Path(tmp_heldout.name)
    print(f"rank {rank}; {len(train)} training / {len(val_records)} validation examples; {args.steps} steps of "
          f"{args.batch_size}; seed {args.seed}; load {os.getloadavg()[0]:.2f}", flush=True)

    jobs = [QualityJob(method=m, lr=lr, steps=args.steps, batch_size=args.batch_size, rank=rank, seed=args.seed,
                       train=train, val_records=val_records, heldout_path=str(heldout_path))
            for m in methods for lr in lr_grid(m, factors)]
    start = time.perf_counter()
    if args.jobs > 1:
        import multiprocessing

        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            runs = []
            for r in pool.map(run_job, jobs):
                runs.append(r)
                _report_run(r)
    else:
        runs = []
        for job in jobs:
            runs.append(run_job(job))
            _report_run(runs[-1])
    base_model = tiny_model()
    base = evaluate_demo(base_model, tokenizer, heldout_path, batch_size=64)
    rows = {"base": {"trainable": 0, "lr": None, "val_loss": None, "exact_match": base["exact_match"],
                     "heldout_loss": answer_loss(base_model, encode(load_demo(heldout_path), tokenizer),
                                                 tokenizer.pad_token_id), "per_skill": base["per_skill"]}}
    for m in methods:
        best = pick([r for r in runs if r["method"] == m])
        rows[m] = {k: best[k] for k in ("trainable", "lr", "weight_decay", "val_loss", "val_exact_match",
                                        "exact_match", "heldout_loss", "per_skill", "train_loss", "train_s")}
    elapsed = time.perf_counter() - start
    print()
    print(quality_table(rows))
    print(f"\n{elapsed / 60:.1f} min; load {os.getloadavg()[0]:.2f}")
    if tmp_heldout is not None:
        os.unlink(tmp_heldout.name)
    config = {"rank": rank, "steps": args.steps, "batch_size": args.batch_size, "val": len(val_records),
              "train": len(train), "lr_factors": factors, "seed": args.seed, "jobs": args.jobs,
              "heldout": len(load_demo(DEMO_HELDOUT, args.heldout_limit)), "minutes": elapsed / 60,
              "torch": torch.__version__, "load_after": list(os.getloadavg())}
    if args.json:
        Path(args.json).write_text(json.dumps({"methods": rows, "runs": runs, "config": config}, indent=1))
    if args.png:
        quality_chart(rows, args.png, f"tiny base, demo task, {args.steps} steps × {args.batch_size}, "
                      f"rank {rank}; lr picked on validation")
    return 0


def _report_run(r: dict) -> None:
    held = f"  held-out EM {r['exact_match']:.3f} loss {r['heldout_loss']:.4f}" if "exact_match" in r else ""
    print(f"{r['method']:>6} lr {r['lr']:<8g} val EM {r['val_exact_match']:.3f} loss {r['val_loss']:.4f}{held}  "
          f"({r['train_s']:.0f}s)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
