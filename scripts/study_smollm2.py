#!/usr/bin/env python
"""The quality study on a real pretrained model, reduced to fit a CPU: SmolLM2-135M-Instruct (model=smollm2-135m)
fine-tuned on the demo task by LoRA, static random sparsity, SpIEL-AG (the paper's rule, and variants) and
SpIEL-MA at the paper's density (LoRA rank r = SpIEL rank-equivalent r), several seeds each at one (lr, λ)
per method, scored by greedy exact match on the held-out file (and the loss on its answer tokens).

No search: each method's (lr, λ) is given (--lr / --wd, defaults in RATES). Seeds run seed-major (every
method's seed 1 before any seed 2), two single-thread processes at a time, so a cut-short study stays
balanced. The CPU step is made cheap first: the 49,152-word head only at label positions
(spiel.training.engine.plain_loop.label_position_loss), autograd stops below the lowest trained parameter (the
embeddings stay frozen), short demo sequences in small batches.

    python scripts/study_smollm2.py --json docs/quality_smollm2.json                 # the study
    python scripts/study_smollm2.py --report docs/quality_smollm2.json               # its table
    python scripts/study_smollm2.py --steps 2 --seeds 1 --heldout-limit 8 --json /tmp/smoke.json  # a smoke run

--json is written after every run, and a rerun with the same --json skips the runs it already holds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

MODEL = "smollm2-135m"
SHAPE = dict(hidden=576, intermediate=1536, layers=30, heads=9, kv_heads=3, vocab=49152)
# (lr, λ) per method: the geometric mean of the tiny demo's pick (3M parameters) and the paper's Table 4 value
# (LLaMA-2-7B); 135M lies halfway between them on a log scale of model size. λ likewise (the paper's λ and
# the demo's λ/10). LoRA: λ 0 as in the paper.
RATES = {"lora": (5.5e-4, 0.0), "static": (1.7e-3, 9.5), "ag": (1.7e-3, 9.5), "ma": (1.0e-2, 0.095)}
DEFAULT_METHODS = ("lora", "static", "ag", "ag+adam_seeding=none", "ma")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def top_layer_targets(n: int) -> tuple[str, ...] | None:
    """The seven projections of the top ``n`` blocks, by name (None: every block)."""
    if n <= 0:
        return None
    return tuple(
        f"layers.{i}.{'mlp' if p in MLP else 'self_attn'}.{p}"
        for i in range(SHAPE["layers"] - n, SHAPE["layers"])
        for p in PROJECTIONS
    )


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    p.add_argument("--lr", default="", help="per-method rates, e.g. lora=1e-3,ag=3e-3 (default: RATES)")
    p.add_argument("--wd", default="", help="per-method λ, e.g. ag=10 (default: RATES)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--rank", type=int, default=None, help="LoRA rank / SpIEL rank_equiv (default: paper density)"
    )
    p.add_argument(
        "--layers",
        type=int,
        default=10,
        help="train the projections of the top N blocks only (0: all); no backward below them",
    )
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--heldout-limit", type=int, default=150, help="score only the first N held-out records")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--jobs", type=int, default=2, help="training processes at once (1 thread each)")
    p.add_argument("--json", default=None, help="every run; written after each, reused by a rerun")
    p.add_argument("--summary", default=None, help="write the per-method summary (JSON) here")
    p.add_argument(
        "--report", default=None, metavar="JSON", help="print the table of a results file and exit"
    )
    return p.parse_args(argv)


def _per_method(text: str) -> dict[str, float]:
    pairs = (item.split("=", 1) for item in text.split(",") if item.strip())
    return {k.strip(): float(v) for k, v in pairs}


def _setting(method: str, lrs: dict, wds: dict) -> tuple[float, float]:
    from spiel.bench.quality import parse_method

    base, _ = parse_method(method)
    lr, wd = RATES[base]
    return lrs.get(method, lrs.get(base, lr)), wds.get(method, wds.get(base, wd))


def summary(data: dict) -> dict:
    """Per method: (lr, λ), seeds, held-out exact match and loss (mean, std, per seed)."""
    out = {}
    for m in data["config"]["methods"]:
        runs = sorted((r for r in data["runs"] if r["method"] == m), key=lambda r: r["seed"])
        if not runs:
            continue
        ems, losses = [r["exact_match"] for r in runs], [r["heldout_loss"] for r in runs]
        out[m] = {
            "lr": runs[0]["lr"],
            "weight_decay": runs[0]["weight_decay"],
            "trainable": runs[0]["trainable"],
            "seeds": [r["seed"] for r in runs],
            "exact_match_per_seed": ems,
            "exact_match": statistics.fmean(ems),
            "exact_match_std": statistics.stdev(ems) if len(ems) > 1 else 0.0,
            "heldout_loss": statistics.fmean(losses),
            "heldout_loss_std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
            "train_loss": statistics.fmean(r["train_loss"] for r in runs),
            "train_s": statistics.fmean(r["train_s"] for r in runs),
        }
    return out


def table(data: dict) -> str:
    lines = [
        "| method | trainable | lr | λ | held-out EM, mean ± std | per seed | held-out loss | train loss |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    base = data["config"].get("base")
    if base:
        lines.append(
            f"| untuned base | 0 | – | – | {base['exact_match']:.3f} | – | {base['heldout_loss']:.3f} | – |"
        )
    for m, r in summary(data).items():
        seeds = ", ".join(f"{e:.3f}" for e in r["exact_match_per_seed"])
        lines.append(
            f"| {m} | {r['trainable']:,} | {r['lr']:g} | {r['weight_decay']:g} | "
            f"**{r['exact_match']:.3f} ± {r['exact_match_std']:.3f}** | {seeds} | "
            f"{r['heldout_loss']:.3f} ± {r['heldout_loss_std']:.3f} | {r['train_loss']:.3f} |"
        )
    return "\n".join(lines)


def _save(path: str | None, data: dict, summary_path: str | None = None) -> None:
    for target, payload in (
        (path, data),
        (summary_path, {"config": data["config"], "methods": summary(data)}),
    ):
        if target:
            tmp = Path(f"{target}.tmp")
            tmp.write_text(json.dumps(payload, indent=1))
            tmp.replace(target)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report:
        print(table(json.loads(Path(args.report).read_text())))
        return 0
    import torch

    from spiel.bench.models import LlamaShape, equivalent_rank
    from spiel.bench.quality import QualityJob, answer_loss, encode, load_base, parse_method, run_job
    from spiel.eval.demo import DEMO_HELDOUT, evaluate_demo, load_demo
    from spiel.io.base_model import load_tokenizer
    from spiel.testing import DEMO_DIR

    methods = [m for m in args.methods.split(",") if m.strip()]
    for m in methods:
        parse_method(m)
    lrs, wds = _per_method(args.lr), _per_method(args.wd)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    rank = args.rank or equivalent_rank(LlamaShape(**SHAPE))  # the density does not depend on the layer count
    targets = top_layer_targets(args.layers)
    tokenizer = load_tokenizer(MODEL)
    train = encode(load_demo(DEMO_DIR / "train.jsonl"), tokenizer)
    heldout = load_demo(DEMO_HELDOUT, args.heldout_limit)
    tmp = tempfile.TemporaryDirectory(prefix="study-smollm2-")
    heldout_path = Path(tmp.name) / "heldout.jsonl"
    heldout_path.write_text("".join(json.dumps(r) + "\n" for r in heldout))
    config = {
        "model": MODEL,
        "methods": methods,
        "rank": rank,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "train": len(train),
        "heldout": len(heldout),
        "max_new_tokens": args.max_new_tokens,
        "seeds": seeds,
        "layers": args.layers or SHAPE["layers"],
        "settings": {m: _setting(m, lrs, wds) for m in methods},
        "jobs": args.jobs,
        "threads_per_job": 1,
        "dtype": "float32",
        "torch": torch.__version__,
        "load_before": list(os.getloadavg()),
    }
    data = {"config": config, "runs": []}
    if args.json and Path(args.json).exists():
        old = json.loads(Path(args.json).read_text())
        keys = ("rank", "steps", "batch_size", "heldout", "max_new_tokens", "layers")
        if {k: old["config"].get(k) for k in keys} != {k: config[k] for k in keys}:
            raise SystemExit(f"{args.json} holds runs with other settings; pass another --json or delete it")
        data["runs"] = old["runs"]
        config["base"] = old["config"].get("base")
    done = {(r["method"], r["seed"]) for r in data["runs"]}
    jobs = [
        QualityJob(
            method=m,
            lr=config["settings"][m][0],
            weight_decay=config["settings"][m][1],
            steps=args.steps,
            batch_size=args.batch_size,
            rank=rank,
            seed=s,
            train=train,
            val_records=[],
            heldout_path=str(heldout_path),
            max_new_tokens=args.max_new_tokens,
            evaluate_val=False,
            stage="seeds",
            model=MODEL,
            label_logits_only=True,
            target_modules=targets,
        )
        for s in seeds
        for m in methods
        if (m, s) not in done
    ]
    print(
        f"rank {rank}; {len(train)} training / {len(heldout)} held-out; {args.steps} steps of {args.batch_size}; "
        f"{len(jobs)} runs to go; load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    import multiprocessing

    with ProcessPoolExecutor(max(1, args.jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {}
        while jobs or futures:
            while jobs and len(futures) < max(1, args.jobs):
                j = jobs.pop(0)
                futures[pool.submit(run_job, j)] = j
            ready, _ = wait(futures, return_when=FIRST_COMPLETED)
            for f in ready:
                futures.pop(f)
                r = f.result()
                r["load_after"] = list(os.getloadavg())
                data["runs"].append(r)
                _save(args.json, data, args.summary)
                print(
                    f"{r['method']:>22} seed {r['seed']}  held-out EM {r['exact_match']:.3f} loss "
                    f"{r['heldout_loss']:.3f}  train loss {r['train_loss']:.3f} ({r['train_s']:.0f}s)",
                    flush=True,
                )
    if not config.get("base"):  # after the runs: the untuned model's score does not gate them
        torch.set_num_threads(1)
        base_model = load_base(MODEL)[0]
        start = time.perf_counter()
        scored = evaluate_demo(
            base_model, tokenizer, heldout_path, batch_size=64, max_new_tokens=args.max_new_tokens
        )
        config["base"] = {
            "exact_match": scored["exact_match"],
            "per_skill": scored["per_skill"],
            "heldout_loss": answer_loss(base_model, encode(heldout, tokenizer), tokenizer.pad_token_id),
            "eval_s": time.perf_counter() - start,
        }
        print(f"untuned base: held-out EM {scored['exact_match']:.3f} {scored['per_skill']}", flush=True)
        _save(args.json, data, args.summary)
    tmp.cleanup()
    print(table(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
