"""Time coding a delta's positions for the compact checkpoint, at LLaMA-2-7B shapes and rank-64 budget.

    python scripts/bench_delta_codec.py [--repeats 5] [--threads 1]

Per weight shape of a LLaMA-2-7B layer (4096x4096 for q/k/v/o, 11008x4096 for gate/up, 4096x11008 for
down; k = 64·(out + in), as a rank-64 LoRA), a random sorted position set is Elias–Fano coded and decoded
(format 3), round-robin with its peer, format 2's CSR (``csr_pattern`` and the narrow casts). Both decodes
include every check ``read_checkpoint`` applies. Prints bits a position, medians and means in
milliseconds, and the sums over one layer's seven matrices.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from spiel.checkpoint import elias_fano
from spiel.checkpoint.codec import decode_csr_legacy
from spiel.delta.indices import csr_pattern, random_subset

SHAPES = {
    "q/k/v/o 4096x4096": (4096, 4096, 4),
    "gate/up 11008x4096": (11008, 4096, 2),
    "down 4096x11008": (4096, 11008, 1),
}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def refuse(problem: str) -> ValueError:
    return ValueError(problem)


def time_shape(out: int, inp: int, repeats: int) -> dict[str, list[float]]:
    n, k = out * inp, 64 * (out + inp)
    positions = random_subset(n, k, torch.Generator().manual_seed(0)).to(torch.int32)
    coded = elias_fano.encode(positions, n)
    assert torch.equal(
        elias_fano.decode(coded["low_bits"], coded["high_bits"], n, k).long(), positions.long()
    )
    row_ptr, col_idx = csr_pattern(positions, out, inp)
    entry = {"k": k, "shape": [out, inp]}
    csr = {"values": torch.zeros(k), "row_ptr": row_ptr.to(torch.int32), "col_idx": col_idx.to(torch.int16)}
    peers = {
        "EF encode": lambda: elias_fano.encode(positions, n),
        "EF decode": lambda: elias_fano.decode(coded["low_bits"], coded["high_bits"], n, k),
        "CSR encode": lambda: [
            t.to(d) for t, d in zip(csr_pattern(positions, out, inp), (torch.int32, torch.int16), strict=True)
        ],
        "CSR decode": lambda: decode_csr_legacy("m", entry, csr, refuse),
    }
    times = {name: [] for name in peers}
    for _ in range(repeats):
        for name, fn in peers.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    bits = 8 * sum(t.numel() for t in coded.values()) / k
    print(
        f"{out}x{inp}: k={k:,} ({100 * k / n:.2f}%), Elias–Fano {bits:.2f} bits a position, "
        f"CSR {16 + 32 * (out + 1) / k:.2f}"
    )
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    layer = {"EF encode": 0.0, "EF decode": 0.0, "CSR encode": 0.0, "CSR decode": 0.0}
    for label, (out, inp, per_layer) in SHAPES.items():
        times = time_shape(out, inp, args.repeats)
        for name, values_ms in times.items():
            rows.append((label, name, statistics.median(values_ms), statistics.mean(values_ms)))
            layer[name] += per_layer * statistics.median(values_ms)
    print(f"{args.repeats} repeats, round-robin; {args.threads} thread(s); {cpu_name()}")
    print("| shape | operation | median ms | mean ms |")
    print("|---|---|---|---|")
    for label, name, median, mean in rows:
        print(f"| {label} | {name} | {median:.1f} | {mean:.1f} |")
    print(
        "one 7B layer (7 matrices), sum of medians: " + ", ".join(f"{n} {v:.0f} ms" for n, v in layer.items())
    )


if __name__ == "__main__":
    main()
