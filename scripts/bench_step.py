#!/usr/bin/env python
"""Time and memory per optimizer step of full FT, LoRA, (IA)3, SpIEL-AG and SpIEL-MA against the frozen
floor: the paper's Table 3, measured side by side in one run, with ratios to LoRA.

Each method runs in its own process on a random-init LLaMA (CPU default: hidden 1024, MLP 2752, 4 layers,
vocab 2048, sequence 512, micro-batch 1, fp32), at the paper's budget density (LoRA rank 64 on
LLaMA-2-7B = 2.47% of the seven projections; the equivalent rank is computed for the shape). It times
whole optimizer steps over ``--periods`` reselection periods (SpIEL-AG's estimation phases and
reselections included) and reports the median and mean per step, and the peak memory beyond the frozen
model (CPU: peak RSS minus RSS after loading; CUDA: max_memory_allocated).

    python scripts/bench_step.py --json bench_step.json --png docs/bench_step_cpu.png
    python scripts/bench_step.py --quick --json bench_step.json      # `make bench`: small, ~1 min
    python scripts/bench_step.py --quant both                        # + QLoRA, qSpIEL-AG, qSpIEL-MA (NF4)
    python scripts/bench_step.py --gpu --json out.json               # LLaMA-2-7B shapes, bf16, CUDA
    python scripts/bench_step.py --gpu --memory-search               # + the paper's minimum-memory search
    python scripts/bench_step.py --wait-load 1.5 ...                 # first wait for a quiet machine

Run from the repo root (no install needed on the CUDA path: torch, transformers and peft only).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

from spiel.bench.models import (
    CPU_DEFAULT,
    LLAMA2_7B,
    LlamaShape,
    equivalent_rank,
    paper_density,
    registry_method,
)
from spiel.bench.report import (
    combine_rounds,
    cpu_table,
    label,
    ratios,
    reselection_table,
    step_chart,
    step_table,
)
from spiel.bench.step import STEP_METHODS, VARIANTS, StepSpec

REPO = Path(__file__).resolve().parents[1]

OOM_EXIT = 3
QUICK_SHAPE = LlamaShape(hidden=512, intermediate=1376, layers=2, heads=4, kv_heads=4, vocab=1024)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--methods",
        default=",".join(STEP_METHODS),
        help=f"from {','.join(STEP_METHODS + tuple(VARIANTS))} (*_applied: SpIEL with merged "
        "storage off; *_loop: selection, optimizer and AG's probe one matrix at a time, as before "
        "batching)",
    )
    p.add_argument(
        "--quant",
        default="none",
        choices=["none", "nf4", "both"],
        help="nf4: NF4 bases (QLoRA, qSpIEL; needs bitsandbytes; fp32 compute on CPU)",
    )
    p.add_argument("--quick", action="store_true", help="small model, R=4, γ=2 (for `make bench`)")
    p.add_argument("--gpu", action="store_true", help="LLaMA-2-7B shapes, bf16, CUDA")
    for name in ("hidden", "intermediate", "layers", "heads", "kv-heads", "vocab"):
        p.add_argument(f"--{name}", type=int, default=None)
    p.add_argument(
        "--seq", type=int, default=None, help="tokens per sequence (default 512; quick 256; gpu 1024)"
    )
    p.add_argument("--batch", type=int, default=1, help="micro-batch size")
    p.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument(
        "--dtype", default=None, choices=["float32", "bfloat16"], help="default fp32 CPU, bf16 CUDA"
    )
    p.add_argument("--device", default=None)
    p.add_argument(
        "--rank", type=int, default=None, help="LoRA rank / SpIEL rank_equiv (default: paper density)"
    )
    p.add_argument("--reselection-steps", type=int, default=None, help="R (default 20; quick 4)")
    p.add_argument("--estimation-steps", type=int, default=None, help="γ (default 5; quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2; quick 1)")
    p.add_argument("--periods", type=int, default=2, help="reselection periods timed")
    p.add_argument("--rounds", type=int, default=1, help="processes per method (order rotated per round)")
    p.add_argument("--grad-path", default="auto", choices=["auto", "dense", "sddmm", "triton"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--memory-search",
        action="store_true",
        help="CUDA: smallest per-process memory fraction (1 GiB steps) that completes 30 steps",
    )
    p.add_argument(
        "--profile",
        default=None,
        metavar="DIR",
        help="also write a torch.profiler table per method to DIR (profiled steps are slower)",
    )
    p.add_argument(
        "--wait-load",
        type=float,
        default=None,
        help="before measuring, wait (poll 60 s, at most --wait-max s) for a 1-min load below this",
    )
    p.add_argument("--wait-max", type=float, default=1200)
    p.add_argument(
        "--baseline-tree",
        default=None,
        metavar="DIR",
        help="also run --baseline-methods from the spiel tree at DIR (e.g. `git worktree add DIR <rev>`), "
        "interleaved with the others, as METHOD@base: before and after a change from one run",
    )
    p.add_argument("--baseline-methods", default="ag,ma")
    p.add_argument("--json", default=None)
    p.add_argument("--png", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def base_spec(args) -> StepSpec:
    shape = LLAMA2_7B if args.gpu else QUICK_SHAPE if args.quick else CPU_DEFAULT
    overrides = {
        k: getattr(args, k.replace("-", "_"))
        for k in ("hidden", "intermediate", "layers", "heads", "kv_heads", "vocab")
    }
    shape = replace(shape, **{k: v for k, v in overrides.items() if v is not None})
    device = args.device or ("cuda" if args.gpu else "cpu")
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    return StepSpec(
        method="floor",
        shape=shape.to_dict(),
        seq=args.seq or (256 if args.quick else 1024 if args.gpu else 512),
        batch=args.batch,
        accum=args.accum,
        dtype=dtype,
        device=device,
        rank=args.rank,
        reselection_steps=args.reselection_steps or (4 if args.quick else 20),
        estimation_steps=args.estimation_steps or (2 if args.quick else 5),
        warmup=args.warmup if args.warmup is not None else (1 if args.quick else 2),
        periods=args.periods,
        grad_path=args.grad_path,
        seed=args.seed,
        threads=args.threads,
    )


def run_worker(
    spec: StepSpec, out_dir: str, tag: str, tree: str | None = None
) -> tuple[int, dict | None, str]:
    """Run one spec in a fresh process (with ``tree``: that spiel tree's own worker and code); (exit code,
    result or None, stderr tail)."""
    out = Path(out_dir) / f"{tag}.json"
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    script = Path(__file__).resolve()
    if tree:
        script = Path(tree).resolve() / "scripts" / "bench_step.py"
        env["PYTHONPATH"] = os.pathsep.join([str(Path(tree).resolve()), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            "--worker",
            json.dumps(asdict(spec)),
            "--out",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    result = json.loads(out.read_text()) if proc.returncode == 0 and out.is_file() else None
    return proc.returncode, result, proc.stderr[-3000:]


def worker_main(spec_json: str, out: str) -> int:
    import torch

    from spiel.bench.step import run

    spec = StepSpec(**json.loads(spec_json))
    try:
        result = run(spec)
    except torch.OutOfMemoryError as e:
        print(f"out of memory: {e}", file=sys.stderr)
        return OOM_EXIT
    Path(out).write_text(json.dumps(result))
    return 0


def wait_for_quiet(threshold: float, max_wait: float) -> list[float]:
    """Poll the 1-minute load every 60 s until it is below ``threshold`` (or ``max_wait`` passes)."""
    waited = 0.0
    while True:
        load = os.getloadavg()
        if load[0] < threshold or waited >= max_wait:
            print(
                f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} after waiting {waited:.0f}s",
                flush=True,
            )
            return list(load)
        time.sleep(60)
        waited += 60


def memory_search(spec: StepSpec, tmp: str, hint_gib: int, total_gib: int) -> dict:
    """The paper's Appendix F: smallest whole-GiB limit (as a memory fraction) completing 30 steps."""
    trial = replace(spec, warmup=0, steps=30, periods=1)
    tried: dict[int, bool] = {}

    def ok(gib: int) -> bool:
        if gib not in tried:
            code, _, err = run_worker(
                replace(trial, memory_fraction=min(1.0, gib / total_gib)),
                tmp,
                f"{spec.method}-{spec.quant}-mem{gib}",
            )
            if code not in (0, OOM_EXIT):
                raise RuntimeError(f"{spec.method} failed at {gib} GiB:\n{err}")
            tried[gib] = code == 0
            print(f"  {spec.method} {gib} GiB: {'ok' if tried[gib] else 'OOM'}", flush=True)
        return tried[gib]

    lo, hi, step = 0, min(total_gib, max(1, hint_gib)), 1
    while not ok(hi):  # gallop up from the hint to a limit that works (lo: the last that did not)
        if hi >= total_gib:
            return {"min_gib": None, "tried": {str(k): v for k, v in sorted(tried.items())}}
        lo, hi, step = hi, min(total_gib, hi + step), step * 2
    step = 1
    while lo == 0 and hi - step > 0:  # the hint worked: gallop down to a limit that fails
        if ok(hi - step):
            hi, step = hi - step, step * 2
        else:
            lo = hi - step
    while hi - lo > 1:  # then bisect: lo fails (or is 0), hi works
        mid = (lo + hi) // 2
        hi, lo = (mid, lo) if ok(mid) else (hi, mid)
    return {"min_gib": hi, "tried": {str(k): v for k, v in sorted(tried.items())}}


def cpu_bf16_support() -> str:
    """Which bf16 matmul hardware this CPU has (bf16 CPU timings only mean something with one of them)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    found = [
        name for flag, name in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16")) if flag in flags
    ]
    return ", ".join(found) if found else "none (bf16 is emulated: bf16 CPU timings say little)"


def machine_info(results: dict[str, list[dict]]) -> dict:
    """Where the numbers come from (the GPU's name from a worker: the parent never initializes CUDA)."""
    import torch

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "cpu_bf16": cpu_bf16_support(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    first = next((r[0] for r in results.values() if r), {})
    info.update({k: first[k] for k in ("threads", "gpu", "gpu_mem_gib") if k in first})
    try:
        info["git_commit"] = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        pass
    return info


def summarize(args, spec0: StepSpec, jobs, results, failed, searched, load_before) -> dict:
    shape = LlamaShape(**spec0.shape)
    order = [m if q == "none" else f"{m}-{q}" for m, q in jobs]
    combined = {k: combine_rounds(results[k]) for k in order if k in results}
    for key, found in searched.items():
        combined[key]["min_gib"] = found["min_gib"]
    config = {
        **{
            k: v
            for k, v in asdict(spec0).items()
            if k not in ("method", "quant", "memory_fraction", "profile")
        },
        "density": spec0.rank * shape.lora_params_per_rank() / shape.target_numel(),
        "paper_density": paper_density(),
        "timed_steps": spec0.timed_steps(),
        "rounds": args.rounds,
        "load_before": load_before,
        "load_after": list(os.getloadavg()),
        "machine": machine_info(results),
    }
    out = {"methods": combined, "ratios_to_lora": ratios(combined), "config": config, "failed": failed}
    if searched:
        out["memory_search"] = searched
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.out)
    from spiel.bench.models import parse_methods

    methods = parse_methods(args.methods, STEP_METHODS + tuple(VARIANTS))
    spec0 = base_spec(args)
    shape = LlamaShape(**spec0.shape)
    spec0 = replace(spec0, rank=spec0.rank or equivalent_rank(shape))
    quants = {"none": ["none"], "nf4": ["nf4"], "both": ["none", "nf4"]}[args.quant]
    jobs = [
        (m, q)
        for q in quants
        for m in methods
        if q != "nf4" or getattr(registry_method(m), "supports_quant", True)
    ]
    if args.baseline_tree:
        if not (Path(args.baseline_tree) / "scripts" / "bench_step.py").is_file():
            raise SystemExit(f"--baseline-tree {args.baseline_tree}: no scripts/bench_step.py there")
        baseline = parse_methods(args.baseline_methods, STEP_METHODS + tuple(VARIANTS))
        jobs += [(f"{m}@base", q) for q in quants for m in baseline if q == "none"]
    load_before = wait_for_quiet(args.wait_load, args.wait_max) if args.wait_load else list(os.getloadavg())
    density = spec0.rank * shape.lora_params_per_rank() / shape.target_numel()
    print(
        f"shape {shape.to_dict()}, rank {spec0.rank} (density {density:.4f}; paper {paper_density():.4f}), "
        f"seq {spec0.seq} x batch {spec0.batch} x accum {spec0.accum}, {spec0.dtype} on {spec0.device}, "
        f"R={spec0.reselection_steps} γ={spec0.estimation_steps}, {spec0.timed_steps()} timed steps after "
        f"{spec0.warmup} warm-up, {args.rounds} round(s)",
        flush=True,
    )
    if spec0.device == "cpu":
        print(f"CPU bf16 hardware: {cpu_bf16_support()}", flush=True)

    results: dict[str, list[dict]] = {}
    failed: dict[str, str] = {}
    searched: dict[str, dict] = {}

    def save() -> dict:  # after every method, so a run cut short still leaves what it measured
        out = summarize(args, spec0, jobs, results, failed, searched, load_before)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1))
        return out

    with tempfile.TemporaryDirectory(prefix="bench-step-") as tmp:
        for rnd in range(args.rounds):
            shift = rnd % len(jobs)
            for method, quant in jobs[shift:] + jobs[:shift]:
                key = method if quant == "none" else f"{method}-{quant}"
                if key in failed:
                    continue
                name, _, from_baseline = method.partition("@")
                spec = replace(spec0, method=name, quant=quant)
                if args.profile:
                    Path(args.profile).mkdir(parents=True, exist_ok=True)
                    spec = replace(spec, profile=str(Path(args.profile) / f"{key}-r{rnd}.txt"))
                code, result, err = run_worker(
                    spec, tmp, f"{key}-r{rnd}", args.baseline_tree if from_baseline else None
                )
                if result is None:
                    failed[key] = (
                        "out of memory" if code == OOM_EXIT else (err.strip().splitlines() or ["?"])[-1]
                    )
                    print(f"{label(key)}: FAILED ({failed[key]})\n{err}", flush=True)
                    continue
                results.setdefault(key, []).append(result)
                bpe = result.get("bytes_per_entry")
                print(
                    f"{label(key):>16}: median {result['step_s_median']:.4f}s  mean {result['step_s_mean']:.4f}s  "
                    f"extra {result['extra_mem_mb']:.0f} MB"
                    + (f"  {bpe['per_entry']:.1f} B/entry" if bpe else "")
                    + f"  (round {rnd + 1})",
                    flush=True,
                )
                save()
        if args.memory_search and spec0.device.startswith("cuda"):
            for key, runs in results.items():
                if "@" in key:
                    continue
                method, _, quant = key.partition("-")
                spec = replace(spec0, method=method, quant=quant or "none")
                hint = math.ceil((runs[0]["base_mem_mb"] + runs[0]["extra_mem_mb"]) / 1024)
                searched[key] = memory_search(spec, tmp, hint, int(runs[0]["gpu_mem_gib"]))
                save()
    out = save()
    print()
    print(step_table(out["methods"], out["ratios_to_lora"]))
    if spec0.device == "cpu":
        print()
        print(cpu_table(out["methods"], out["ratios_to_lora"]))
    if any(m.get("reselection") for m in out["methods"].values()):
        print()
        print(reselection_table(out["methods"]))
        if spec0.device == "cpu":
            print("\nthe same in CPU seconds:")
            print(reselection_table(out["methods"], "reselection_cpu"))
    profiles = {
        label(k): runs[0]["profile"] for k, runs in results.items() if runs and runs[0].get("profile")
    }
    if profiles:
        from spiel.bench.profile import breakdown_table

        unit = (
            "device time; idle = wall − busy"
            if spec0.device.startswith("cuda")
            else "self CPU time of the operators (wall clock inside each); untraced = wall − their sum"
        )
        table = breakdown_table(profiles, unit)
        Path(args.profile, "breakdown.md").write_text(table + "\n")
        print("\nwhere a step's time goes (torch.profiler, ms per step of each kind):\n" + table)
    if searched:
        print(
            "\nminimum memory (GiB, 30 steps): "
            + ", ".join(f"{label(k)} {v['min_gib']}" for k, v in searched.items())
        )
    print(f"load average before {load_before[0]:.2f}, after {out['config']['load_after'][0]:.2f}")
    if args.png and out["methods"]:
        machine = out["config"]["machine"]
        step_chart(
            out["methods"],
            out["ratios_to_lora"],
            args.png,
            f"{spec0.dtype}, hidden {shape.hidden} × {shape.layers} layers, seq {spec0.seq}, rank {spec0.rank}; "
            f"{machine.get('gpu') or machine['cpu']}",
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
