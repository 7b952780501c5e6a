#!/usr/bin/env python
"""Mini-Table 1 on a CPU under a fair protocol: LoRA, SpIEL-AG, SpIEL-MA, static random sparsity (SpIEL's
layer with its random indices never reselected) and SpIEL variants, fine-tuned on the demo task from the
tiny base at the same parameter budget (LoRA rank r = SpIEL rank-equivalent r, r from the paper's density,
2.47% of the target weights). Full FT and (IA)3 on request.

1. Search: every (lr, λ) of the method's joint grid (spiel.bench.quality.search_grid) trained once with the
   search seed and scored on a validation split of the training file; the pick is the highest validation
   exact match, then the lowest validation loss.
2. Seeds: the picked setting trained again with each of --seeds (indices / adapter init and data order)
   and scored on the held-out file. The table gives mean ± standard deviation over those seeds, and for
   the sparse methods the support's concentration (spiel.bench.support).

    python scripts/bench_quality.py --json quality.json --markdown quality.md      # ~45 min on 2 quiet cores
    python scripts/bench_quality.py --methods ag+drop=change --json variants.json  # a variant, same protocol
    python scripts/bench_quality.py --report quality.json variants.json            # one table from several runs
    python scripts/bench_quality.py --methods lora,shira --grids grids.json --summary summary.json
                                            # explicit (lr, λ) grids per method; a summary after every run
    python scripts/bench_quality.py --steps 20 --val 40 --heldout-limit 40 --lr-factors 1 --decay-factors 1 \\
        --seeds 1,2                                                                 # a smoke run

With --json the results are written after every run, and a rerun with the same --json skips the runs it
already holds (so a killed run resumes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from spiel.bench.models import LlamaShape, equivalent_rank  # noqa: E402  (after OMP_WAIT_POLICY)
from spiel.bench.quality import (  # noqa: E402
    DECAY_FACTORS,
    GRID_SHAPES,
    LR_FACTORS,
    SEARCH_SEED,
    SEEDS,
    QualityJob,
    answer_loss,
    encode,
    parse_method,
    pick,
    run_job,
    search_grid,
    split_records,
)
from spiel.bench.report import protocol_rows, protocol_table, quality_chart  # noqa: E402

DEFAULT_METHODS = ("lora", "ag", "ma", "static")


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help="comma-separated: full, lora, ia3, ag, ma, static, shira (peft), or <method>+<key>=<value> variants",
    )
    p.add_argument("--steps", type=int, default=170, help="optimizer steps (170 × 16 ≈ one epoch)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--val", type=int, default=300, help="training records held out for the search")
    p.add_argument("--heldout-limit", type=int, default=None, help="score only the first N held-out records")
    p.add_argument(
        "--lr-factors",
        default=",".join(f"{f:.4g}" for f in LR_FACTORS),
        help="rates searched = the demo's rate for the method × these",
    )
    p.add_argument(
        "--decay-factors",
        default=",".join(f"{f:g}" for f in DECAY_FACTORS),
        help="decays per step searched, lr·λ = the paper's lr·λ × these",
    )
    p.add_argument(
        "--grid",
        default="cross",
        choices=GRID_SHAPES,
        help="cross: each decay at the demo's rate and each rate at the middle decay; full: all pairs",
    )
    p.add_argument(
        "--grids",
        default=None,
        metavar="JSON",
        help='explicit search grids, {"method": [[lr, λ], ...]} for every method (replaces the '
        "--lr-factors / --decay-factors grid); a one-point grid is no search (seeds only)",
    )
    p.add_argument(
        "--summary",
        default=None,
        metavar="JSON",
        help="after every run, write this budget's summary (grid, pick, per-seed and mean ± std held-out "
        "scores per method) under the key rank<r> of this file, keeping its other keys",
    )
    p.add_argument(
        "--seeds", default=",".join(map(str, SEEDS)), help="seeds of the runs at the picked setting"
    )
    p.add_argument("--search-seed", type=int, default=SEARCH_SEED)
    p.add_argument(
        "--split-seed", type=int, default=0, help="seed of the validation split (fixed across seeds)"
    )
    p.add_argument(
        "--rank", type=int, default=None, help="LoRA rank / SpIEL rank_equiv (default: paper density)"
    )
    p.add_argument("--jobs", type=int, default=2, help="training processes at once (1 thread each)")
    p.add_argument("--json", default=None, help="results file; written after every run, reused by a rerun")
    p.add_argument("--markdown", default=None, help="write the table here")
    p.add_argument("--png", default=None)
    p.add_argument(
        "--report",
        nargs="+",
        default=None,
        metavar="JSON",
        help="print one table from these result files and exit (no training)",
    )
    return p.parse_args(argv)


def tiny_shape() -> LlamaShape:
    from transformers import AutoConfig

    from spiel.testing import TINY_MODEL_DIR

    c = AutoConfig.from_pretrained(TINY_MODEL_DIR, trust_remote_code=False)
    return LlamaShape(
        hidden=c.hidden_size,
        intermediate=c.intermediate_size,
        layers=c.num_hidden_layers,
        heads=c.num_attention_heads,
        kv_heads=c.num_key_value_heads,
        vocab=c.vocab_size,
    )


def _key(r: dict) -> tuple:
    return r["method"], r["stage"], r["lr"], r["weight_decay"], r["seed"]


def _load_previous(path: str | None, config: dict) -> list[dict]:
    """The runs of an earlier invocation with the same --json, if its settings match this one's."""
    if not path or not Path(path).exists():
        return []
    data = json.loads(Path(path).read_text())
    same = {k: data["config"].get(k) for k in _RESUME_KEYS} == {k: config[k] for k in _RESUME_KEYS}
    if not same:
        raise SystemExit(
            f"{path} holds runs with other settings ({ {k: data['config'].get(k) for k in _RESUME_KEYS} }); "
            f"pass another --json or delete it"
        )
    return data["runs"]


_RESUME_KEYS = ("rank", "steps", "batch_size", "val", "split_seed", "heldout")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report:
        return report(args.report, args.markdown, args.png)
    import torch

    from spiel.eval.demo import DEMO_HELDOUT, evaluate_demo, load_demo
    from spiel.testing import DEMO_DIR, tiny_model, tiny_tokenizer

    methods = [m for m in args.methods.split(",") if m.strip()]
    for m in methods:
        parse_method(m)  # refuse an unknown method or malformed variant before any training
    lr_factors, decay_factors, seeds = (
        _floats(args.lr_factors),
        _floats(args.decay_factors),
        _ints(args.seeds),
    )
    if not seeds:
        raise SystemExit("--seeds: give at least one seed")
    rank = args.rank or equivalent_rank(tiny_shape())
    tokenizer = tiny_tokenizer()
    train_records, val_records = split_records(load_demo(DEMO_DIR / "train.jsonl"), args.val, args.split_seed)
    train = encode(train_records, tokenizer)
    heldout_records = load_demo(DEMO_HELDOUT, args.heldout_limit)
    tmp = tempfile.TemporaryDirectory(prefix="bench-quality-")
    heldout_path = Path(tmp.name) / "heldout.jsonl"
    heldout_path.write_text("".join(json.dumps(r) + "\n" for r in heldout_records))
    config = {
        "methods": methods,
        "rank": rank,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "val": len(val_records),
        "train": len(train),
        "heldout": len(heldout_records),
        "split_seed": args.split_seed,
        "search_seed": args.search_seed,
        "seeds": seeds,
        "lr_factors": lr_factors,
        "decay_factors": decay_factors,
        "grid": args.grid,
        "jobs": args.jobs,
        "torch": torch.__version__,
        "cpu": _cpu_name(),
        "load_before": list(os.getloadavg()),
    }
    grids = {m: search_grid(m, lr_factors, decay_factors, args.grid) for m in methods}
    if args.grids:
        given = json.loads(Path(args.grids).read_text())
        missing = [m for m in methods if not given.get(m)]
        if missing:
            raise SystemExit(f"--grids {args.grids}: no grid for {missing}")
        grids = {m: [(float(lr), float(wd)) for lr, wd in given[m]] for m in methods}
    config["grids"] = grids
    runs = _load_previous(args.json, config)
    done = {_key(r): r for r in runs}
    print(
        f"rank {rank}; {len(train)} training / {len(val_records)} validation / {len(heldout_records)} held-out "
        f"examples; {args.steps} steps of {args.batch_size}; load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    for m in methods:
        print(f"  {m}: grid (lr, λ) {grids[m]}", flush=True)

    def job(method, lr, wd, seed, stage):
        return QualityJob(
            method=method,
            lr=lr,
            weight_decay=wd,
            steps=args.steps,
            batch_size=args.batch_size,
            rank=rank,
            seed=seed,
            train=train,
            val_records=val_records,
            heldout_path=str(heldout_path),
            stage=stage,
            evaluate_val=stage == "search",
            evaluate_heldout=stage == "seeds",
        )

    def seed_jobs(method):
        best = pick([r for r in runs if r["method"] == method and r["stage"] == "search"])
        return [job(method, best["lr"], best["weight_decay"], s, "seeds") for s in seeds]

    start = time.perf_counter()
    fixed = [m for m in methods if len(grids[m]) == 1]  # a one-point grid is no search: straight to the seeds
    search = [
        job(m, lr, wd, args.search_seed, "search") for m in methods if m not in fixed for lr, wd in grids[m]
    ]
    # seed runs of methods whose search is complete: these go first
    seeds_ready: list[QualityJob] = [job(m, *grids[m][0], s, "seeds") for m in fixed for s in seeds]
    left = {m: len(grids[m]) for m in methods}

    def finished(j, result):
        """Record a run (or a cached one); when a method's search is complete, queue its seed runs."""
        if _key(result) not in done:
            runs.append(result)
            done[_key(result)] = result
            _report_run(result)
            _save(args.json, runs, config, start)
            _save_summary(args.summary, runs, config)
        if j.stage == "search":
            left[j.method] -= 1
            if left[j.method] == 0:
                seeds_ready.extend(seed_jobs(j.method))

    def next_job():
        """Seed runs before further search runs (methods finish early, in --methods order); cached runs
        are taken without training."""
        while seeds_ready or search:
            j = seeds_ready.pop(0) if seeds_ready else search.pop(0)
            key = (j.method, j.stage, j.lr, j.weight_decay, j.seed)
            if key not in done:
                return j
            finished(j, done[key])
        return None

    import multiprocessing

    with ProcessPoolExecutor(max(1, args.jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {}

        def fill():
            while len(futures) < max(1, args.jobs):
                j = next_job()
                if j is None:
                    return
                futures[pool.submit(run_job, j)] = j

        fill()
        while futures:
            ready, _ = wait(futures, return_when=FIRST_COMPLETED)
            for f in ready:
                j = futures.pop(f)
                finished(j, f.result())
            fill()

    base_model = tiny_model()
    base = evaluate_demo(base_model, tokenizer, heldout_path, batch_size=64)
    config["base"] = {
        "exact_match": base["exact_match"],
        "heldout_loss": answer_loss(base_model, encode(heldout_records, tokenizer), tokenizer.pad_token_id),
    }
    tmp.cleanup()
    elapsed = _save(args.json, runs, config, start)
    rows = protocol_rows(runs, methods, config["base"])
    table = protocol_table(rows)
    print()
    print(table)
    print(f"\n{elapsed / 60:.1f} min this invocation; load {os.getloadavg()[0]:.2f}")
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    if args.png:
        _chart(rows, args.png, config)
    return 0


def report(paths: list[str], markdown: str | None, png: str | None = None) -> int:
    """One table (and chart) from several result files (e.g. the baselines and a later run of variants)."""
    runs, methods, base, config = [], [], None, None
    for path in paths:
        data = json.loads(Path(path).read_text())
        runs += data["runs"]
        methods += [m for m in data["config"]["methods"] if m not in methods]
        base = base or data["config"].get("base")
        config = config or data["config"]
    rows = protocol_rows(runs, methods, base)
    table = protocol_table(rows)
    print(table)
    if markdown:
        Path(markdown).write_text(table + "\n")
    if png:
        _chart(rows, png, config)
    return 0


def _chart(rows: dict, png: str, config: dict) -> None:
    quality_chart(
        {m: {"exact_match": r["exact_match"], "heldout_loss": r["heldout_loss"]} for m, r in rows.items()},
        png,
        f"tiny base, demo task, {config['steps']} steps × {config['batch_size']}, rank {config['rank']}; "
        f"mean of {len(config['seeds'])} seeds at the (lr, λ) picked on validation",
    )


def _save(path: str | None, runs: list[dict], config: dict, start: float) -> float:
    elapsed = time.perf_counter() - start
    if path:
        config = {**config, "minutes": elapsed / 60, "load_after": list(os.getloadavg())}
        tmp = Path(f"{path}.tmp")
        tmp.write_text(json.dumps({"config": config, "runs": runs}, indent=1))
        tmp.replace(path)
    return elapsed


def summary(runs: list[dict], config: dict) -> dict:
    """Per method: the grid searched, the pick, and the held-out scores per seed and as mean ± std."""
    from statistics import fmean, stdev

    from spiel.bench.quality import pick

    out = {}
    for m in config["methods"]:
        search = [r for r in runs if r["method"] == m and r["stage"] == "search"]
        entry = {"grid": config["grids"][m], "searched": len(search)}
        seeds = []
        if not search and len(config["grids"][m]) == 1:  # no search: the one point
            lr, wd = config["grids"][m][0]
            entry["pick"] = {"lr": lr, "weight_decay": wd}
            seeds = sorted(
                (r for r in runs if r["method"] == m and r["stage"] == "seeds"), key=lambda r: r["seed"]
            )
        if search:
            best = pick(search)
            entry["pick"] = {k: best[k] for k in ("lr", "weight_decay", "val_exact_match", "val_loss")}
            seeds = sorted(
                (
                    r
                    for r in runs
                    if r["method"] == m
                    and r["stage"] == "seeds"
                    and (r["lr"], r["weight_decay"]) == (best["lr"], best["weight_decay"])
                ),
                key=lambda r: r["seed"],
            )
        if seeds:
            ems, losses = [r["exact_match"] for r in seeds], [r["heldout_loss"] for r in seeds]
            entry.update(
                per_seed=[
                    {"seed": r["seed"], "exact_match": r["exact_match"], "heldout_loss": r["heldout_loss"]}
                    for r in seeds
                ],
                exact_match_mean=fmean(ems),
                exact_match_std=stdev(ems) if len(ems) > 1 else 0.0,
                heldout_loss_mean=fmean(losses),
                heldout_loss_std=stdev(losses) if len(losses) > 1 else 0.0,
            )
        out[m] = entry
    return {
        "rank": config["rank"],
        "steps": config["steps"],
        "batch_size": config["batch_size"],
        "seeds": config["seeds"],
        "methods": out,
    }


def _save_summary(path: str | None, runs: list[dict], config: dict) -> None:
    if not path:
        return
    target = Path(path)
    data = json.loads(target.read_text()) if target.exists() else {}
    data[f"rank{config['rank']}"] = summary(runs, config)
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(target)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _report_run(r: dict) -> None:
    score = (
        f"val EM {r['val_exact_match']:.3f} loss {r['val_loss']:.4f}"
        if r["stage"] == "search"
        else f"held-out EM {r['exact_match']:.3f} loss {r['heldout_loss']:.4f}"
    )
    print(
        f"{r['method']:>12} {r['stage']:>6} lr {r['lr']:<8g} λ {r['weight_decay']:<8g} seed {r['seed']}  {score}  "
        f"train loss {r['train_loss']:.3f} ({r['train_s']:.0f}s)",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
