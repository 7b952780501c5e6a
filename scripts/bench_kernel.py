#!/usr/bin/env python
"""Benchmark the values' gradient of the sparse-delta layer by each gather-gradient path.

For LLaMA-2-7B layer shapes (4096x4096 attention projections, 11008x4096 MLP projections), token
counts 512 and 2048 and budgets matching LoRA ranks 8/16/64 (k = r·(in+out)), it times
``(dYᵀ X).view(-1)[indices]`` by ``dense``, ``blocked``, ``sddmm``, ``auto`` (and ``triton``,
``triton_tiles`` on CUDA), prints the median time of each and its ratio to ``dense``, the largest single
allocation each made, which path the calibrated ``auto`` settled on, and the Triton kernels' static
figures (registers, spills, shared memory for sm_80/sm_90; ``--no-static`` skips them).

    python scripts/bench_kernel.py                 # full sizes
    python scripts/bench_kernel.py --quick         # 1024-wide shapes, for `make bench`
    python scripts/bench_kernel.py --crossover     # density sweep used to fit the CPU `auto` rule
    python scripts/bench_kernel.py --json out.json

Needs only torch (+ triton on CUDA) and ``spiel.delta``; run from the repo root without installing.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # quiet the profiler used for memory figures
import torch  # noqa: E402

from spiel.delta import gather_grad, random_subset
from spiel.delta.grad_paths import calibrated_choices, calibration_key

FULL_SHAPES = [(4096, 4096), (11008, 4096)]
QUICK_SHAPES = [(1024, 1024), (2752, 1024)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shapes and token counts")
    p.add_argument("--crossover", action="store_true", help="sweep densities on one shape")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16"],
        help="default: bfloat16 on CUDA, float32 on CPU (CPU bf16 GEMMs say little)",
    )
    p.add_argument("--ranks", default="8,16,64")
    p.add_argument("--tokens", default=None, help="comma list; default 512,2048 (quick: 256,512)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--paths", default=None, help="comma list of paths to time (default: all on the device)")
    p.add_argument(
        "--no-static", action="store_true", help="skip compiling the Triton kernels for sm_80/sm_90"
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="CUDA: time each Triton kernel at several block configurations (4096x4096, 2048 tokens)",
    )
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--markdown", default=None, help="write the table as markdown here")
    return p.parse_args(argv)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved_medians(calls: dict, device, repeats: int) -> dict:
    """Median time of each call, running them round-robin so machine noise hits all paths alike."""
    for fn in calls.values():  # warm-up
        fn()
    sync(device)
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def peak_bytes(fn, device):
    """Largest extra memory of one call: CUDA peak allocated, or the largest CPU allocation."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    act = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=act, profile_memory=True) as prof:
        fn()
    return max((e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0), default=0)


# HBM bandwidth by card, where the device properties do not give clock and bus width (bytes/s, vendor figures).
HBM_BYTES_PER_S = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12}


def hbm_bandwidth(device) -> float | None:
    """The device's HBM bandwidth in bytes/s (from its memory clock and bus width, else by name)."""
    props = torch.cuda.get_device_properties(device)
    clock, width = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    if clock and width:
        return 2 * clock * 1e3 * width / 8  # double data rate; the clock in kHz
    return next((bw for name, bw in HBM_BYTES_PER_S.items() if name in props.name), None)


def roofline(out_f: int, in_f: int, tokens: int, k: int, element_bytes: int, hbm: float | None) -> dict:
    """Lower bounds of the row kernel (``triton_rows``): the bytes that must move through HBM (both transposed
    copies written and read back, their sources read, index and result vectors), the L2 traffic of re-reading
    an ``Xᵀ`` row per entry and ``dYᵀ`` once per row, and the gather kernel's (``triton``) HBM bytes were no
    row ever reused (two token rows per entry)."""
    hbm_bytes = 3 * element_bytes * tokens * (in_f + out_f) + 8 * k
    l2_bytes = element_bytes * tokens * (k + out_f)
    no_reuse = 2 * element_bytes * tokens * k + 2 * element_bytes * tokens * (in_f + out_f) + 8 * k
    out = {"hbm_mb": hbm_bytes / 1e6, "l2_mb": l2_bytes / 1e6, "no_reuse_mb": no_reuse / 1e6}
    if hbm:
        out.update(hbm_ms=hbm_bytes / hbm * 1e3, no_reuse_ms=no_reuse / hbm * 1e3, hbm_tb_s=hbm / 1e12)
    return out


def bench_case(out_f, in_f, tokens, k, dtype, device, paths, repeats):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, in_f, generator=gen).to(device=device, dtype=dtype)
    g = torch.randn(tokens, out_f, generator=gen).to(device=device, dtype=dtype)
    indices = random_subset(out_f * in_f, k, gen).to(device=device, dtype=torch.int32)
    ref = gather_grad(x, g, indices, out_f, in_f, "dense").float()
    row = {"out": out_f, "in": in_f, "tokens": tokens, "k": k, "density": k / (out_f * in_f)}
    calls = {path: (lambda path=path: gather_grad(x, g, indices, out_f, in_f, path)) for path in paths}
    medians = interleaved_medians(calls, device, repeats)  # auto calibrates in the warm-up call
    key = calibration_key(x, k, out_f, in_f)
    from spiel.delta import choose_grad_path

    row["auto_choice"] = calibrated_choices().get(key) or choose_grad_path(device, tokens, k, out_f, in_f)
    for path, call in calls.items():
        err = (call().float() - ref).abs().max().item() / max(1e-12, ref.abs().max().item())
        row[path] = {
            "median_s": medians[path],
            "peak_mb": peak_bytes(call, device) / 2**20,
            "max_rel_err": err,
        }
    for path in paths:
        row[path]["ratio_to_dense"] = row[path]["median_s"] / row["dense"]["median_s"]
    contenders = [p for p in paths if p != "auto"]
    best = min(contenders, key=lambda p: row[p]["median_s"])
    row["best_path"] = best
    row["auto_vs_best"] = row["auto"]["median_s"] / row[best]["median_s"]
    # What auto's choice costs, judged on the chosen path's own timing (free of auto-vs-path noise).
    chosen = row["auto_choice"]
    row["auto_choice_vs_best"] = row[chosen]["median_s"] / row[best]["median_s"] if chosen in row else None
    row["roofline"] = roofline(
        out_f, in_f, tokens, k, x.element_size(), hbm_bandwidth(device) if device.type == "cuda" else None
    )
    return row


def print_table(rows, paths):
    head = (
        f"{'out x in':>12} {'tokens':>6} {'k':>8} {'density':>8} "
        + " ".join(f"{p + ' ms':>10} {p + '/dense':>12}" for p in paths)
        + f" {'auto→':>7} {'auto/best':>9}"
    )
    print(head)
    for r in rows:
        cells = " ".join(f"{r[p]['median_s'] * 1e3:10.1f} {r[p]['ratio_to_dense']:12.3f}" for p in paths)
        print(
            f"{r['out']:>5}x{r['in']:<6} {r['tokens']:>6} {r['k']:>8} {r['density']:8.4f} {cells} "
            f"{r['auto_choice']:>7} {r['auto_vs_best']:9.3f}"
        )
    print(
        "peak extra memory (MB): "
        + "; ".join(
            f"{r['out']}x{r['in']}/{r['tokens']}/k={r['k']}: "
            + ", ".join(f"{p} {r[p]['peak_mb']:.1f}" for p in paths)
            for r in rows[:3]
        )
        + (" ..." if len(rows) > 3 else "")
    )


def markdown_table(rows, paths, header: str) -> str:
    lines = [
        header,
        "",
        "| out × in | tokens | k (LoRA r) | density | "
        + " | ".join(f"{p} ms" for p in paths)
        + " | sddmm / dense | auto picks |",
        "|---|---|---|---|" + "---|" * len(paths) + "---|---|",
    ]
    for r in rows:
        rank = r["k"] // (r["out"] + r["in"])
        cells = " | ".join(f"{r[p]['median_s'] * 1e3:.1f}" for p in paths)
        sddmm = f"{r['sddmm']['ratio_to_dense']:.3f}" if "sddmm" in r else "–"
        lines.append(
            f"| {r['out']}×{r['in']} | {r['tokens']} | {r['k']} ({rank}) | {r['density']:.4f} | {cells} | "
            f"{sddmm} | {r['auto_choice']} |"
        )
    return "\n".join(lines) + "\n"


SWEEP_CONFIGS = {
    "gather": [
        dict(BLOCK_K=32, BLOCK_T=128, num_warps=4),
        dict(BLOCK_K=64, BLOCK_T=64, num_warps=4),
        dict(BLOCK_K=16, BLOCK_T=256, num_warps=4),
        dict(BLOCK_K=64, BLOCK_T=128, num_warps=8),
    ],
    "tiles": [
        dict(BLOCK_R=128, BLOCK_C=128, BLOCK_T=32, num_warps=8, num_stages=4),
        dict(BLOCK_R=128, BLOCK_C=128, BLOCK_T=64, num_warps=8, num_stages=3),
        dict(BLOCK_R=128, BLOCK_C=64, BLOCK_T=64, num_warps=4, num_stages=3),
        dict(BLOCK_R=64, BLOCK_C=64, BLOCK_T=32, num_warps=4, num_stages=3),
    ],
}


def sweep(device, dtype, repeats: int) -> list[dict]:
    """Median time of each Triton kernel configuration against dense (for choosing ``KERNEL_CONFIGS``)."""
    from spiel.delta import triton_sddmm

    rows = []
    saved = dict(triton_sddmm.KERNEL_CONFIGS)
    try:
        for rank in (8, 64):
            out_f = in_f = 4096
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(2048, in_f, generator=gen).to(device=device, dtype=dtype)
            g = torch.randn(2048, out_f, generator=gen).to(device=device, dtype=dtype)
            indices = random_subset(out_f * in_f, rank * (out_f + in_f), gen).to(
                device=device, dtype=torch.int32
            )
            call = functools.partial(gather_grad, x, g, indices, out_f, in_f)
            calls = {"dense": functools.partial(call, "dense")}
            dense_ms = interleaved_medians(calls, device, repeats)["dense"] * 1e3
            for kernel, path in (("gather", "triton"), ("tiles", "triton_tiles")):
                for cfg in SWEEP_CONFIGS[kernel]:
                    triton_sddmm.KERNEL_CONFIGS[kernel] = cfg
                    try:
                        ms = (
                            interleaved_medians({path: functools.partial(call, path)}, device, repeats)[path]
                            * 1e3
                        )
                    except Exception as e:  # a configuration the GPU cannot run: say so, keep sweeping
                        print(f"  rank {rank} {kernel} {cfg}: failed ({type(e).__name__}: {e})", flush=True)
                        continue
                    rows.append(
                        {"rank": rank, "kernel": kernel, "config": cfg, "ms": ms, "dense_ms": dense_ms}
                    )
                    print(
                        f"  rank {rank:>2} {kernel:<6} {cfg}: {ms:.3f} ms = {ms / dense_ms:.3f}x dense "
                        f"({dense_ms:.3f} ms)",
                        flush=True,
                    )
                triton_sddmm.KERNEL_CONFIGS[kernel] = saved[kernel]
    finally:
        triton_sddmm.KERNEL_CONFIGS.update(saved)
    return rows


def static_figures() -> list[dict]:
    """Registers, spills and shared memory of every Triton kernel, compiled for sm_80 and sm_90 (in a child
    process: the compiler must not run in interpreter mode, and a failure must not end the benchmark)."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = (
        "import json; from dataclasses import asdict; from spiel.delta.triton_static import compile_all; "
        "print(json.dumps([asdict(f) for f in compile_all()]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(Path(__file__).resolve().parents[1]),
    )
    if proc.returncode != 0:
        print(f"Triton static figures unavailable: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        return []
    from spiel.delta.triton_static import StaticFigures

    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    print("Triton kernels, static figures (cuobjdump -res-usage):")
    for f in figures:
        print("  " + StaticFigures(**f).line())
    return figures


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    torch.set_num_threads(torch.get_num_threads())
    paths = ["dense", "blocked", "sddmm", "auto"] + (
        ["triton", "triton_rows", "triton_tiles"] if device.type == "cuda" else []
    )
    if args.paths:
        paths = ["dense"] + [p for p in args.paths.split(",") if p != "dense"]
    tokens_list = [int(t) for t in (args.tokens or ("256,512" if args.quick else "512,2048")).split(",")]
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    cases = []
    if args.crossover:
        out_f, in_f = shapes[0]
        for density in (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.10, 0.12, 0.16, 0.25):
            for tokens in tokens_list:
                cases.append((out_f, in_f, tokens, int(density * out_f * in_f)))
    else:
        for out_f, in_f in shapes:
            for tokens in tokens_list:
                for r in (int(r) for r in args.ranks.split(",")):
                    cases.append((out_f, in_f, tokens, r * (out_f + in_f)))
    if args.sweep:
        print(f"kernel configurations, {dtype}, 4096x4096, 2048 tokens:", flush=True)
        swept = sweep(device, dtype, args.repeats)
        if args.json:
            Path(args.json).write_text(json.dumps({"sweep": swept}, indent=1))
        return
    rows = []
    for out_f, in_f, tokens, k in cases:
        rows.append(bench_case(out_f, in_f, tokens, k, dtype, device, paths, args.repeats))
        r = rows[-1]
        print(
            f"  {out_f}x{in_f} tokens={tokens} k={k}: "
            + ", ".join(f"{p} {r[p]['median_s'] * 1e3:.3f} ms" for p in paths),
            flush=True,
        )
        roof = r["roofline"]
        if "hbm_ms" in roof:
            rows_ms = r["triton_rows"]["median_s"] * 1e3 if "triton_rows" in r else float("nan")
            print(
                f"    roofline of triton_rows: {roof['hbm_mb']:.0f} MB through HBM = {roof['hbm_ms']:.3f} ms at "
                f"{roof['hbm_tb_s']:.2f} TB/s, plus {roof['l2_mb']:.0f} MB of L2 re-reads; measured "
                f"{rows_ms:.3f} ms; without row reuse {roof['no_reuse_ms']:.3f} ms",
                flush=True,
            )
    print()
    print(
        f"device={device} ({torch.cuda.get_device_name() if device.type == 'cuda' else platform.processor() or 'cpu'}),"
        f" dtype={dtype}, threads={torch.get_num_threads()}, torch {torch.__version__}"
    )
    print_table(rows, paths)
    if "auto" in paths:
        right = sum(r["auto_choice"] == r["best_path"] for r in rows)
        worst_choice = max((r["auto_choice_vs_best"] or float("nan")) for r in rows)
        worst_dense = max(r["auto"]["ratio_to_dense"] for r in rows)
        print(
            f"auto picked the fastest path in {right} of {len(rows)} cases; its choice is at most "
            f"{worst_choice:.3f}x the fastest (measured auto call: at most "
            f"{max(r['auto_vs_best'] for r in rows):.3f}x the fastest, {worst_dense:.3f}x dense)"
        )
    static = [] if args.no_static else static_figures()
    if args.markdown:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        header = (
            f"{device}, {dtype}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"median of {args.repeats} interleaved runs, 1-min load average at the end {load:.2f}"
        )
        Path(args.markdown).write_text(markdown_table(rows, paths, header))
        print(f"wrote {args.markdown}")
    if args.json:
        meta = {
            "device": str(device),
            "dtype": str(dtype),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "quick": args.quick,
            "crossover": args.crossover,
        }
        Path(args.json).write_text(
            json.dumps({"config": meta, "rows": rows, "static": static}, indent=1, default=str)
        )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
