"""Time switching between two named deltas on the tiny model (``SpielModel.set_delta``).

    python scripts/bench_delta_switch.py [--rank-equiv 8] [--repeats 200]

Peers, measured round-robin in the same run: ``set_delta`` (pointer swap; the base is never written),
merge-swapping (``unmerge`` the active delta and ``merge`` the other into the base weights in place, as a
merged serving set-up would), and reloading the delta with ``from_pretrained`` onto a kept copy of the base
(the only way before named deltas; the base copy itself is not timed). One forward pass on 16 tokens is
shown for scale. Prints medians and means in microseconds.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from spiel import SpielConfig, get_spiel_model
from spiel.model.spiel_model import SpielModel
from spiel.testing import tiny_model


def save_random_delta(path: Path, rank_equiv: int, seed: int) -> None:
    model = get_spiel_model(tiny_model(), SpielConfig(rank_equiv=rank_equiv, seed=seed))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.deltas.values():
            layer.values.copy_(torch.randn(layer.k, generator=g) * 0.01)
    model.save_pretrained(path)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank-equiv", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "a", Path(tmp) / "b"
        save_random_delta(a, args.rank_equiv, 1)
        save_random_delta(b, args.rank_equiv, 2)
        model = SpielModel.from_pretrained(tiny_model(), a).load_delta(b, "b").eval()
        merged = SpielModel.from_pretrained(tiny_model(), a)
        merged_sets = [
            {n: (layer.indices, layer.values) for n, layer in m.deltas.items()}
            for m in (merged, SpielModel.from_pretrained(tiny_model(), b))
        ]
        for layer in merged.deltas.values():
            layer.merge()
        base_copies: list = []
        ids = torch.arange(16).unsqueeze(0)
        k = model.num_tunable()
        total = sum(p.numel() for p in merged.parameters())

        def switch():
            model.set_delta("b" if model.active_delta == "default" else "default")

        def merge_swap():
            merged_sets.reverse()
            for name, layer in merged.deltas.items():
                layer.unmerge()
                layer.indices, layer.values = merged_sets[0][name]
                layer.merge()

        def reload():
            SpielModel.from_pretrained(base_copies.pop(), b)

        def forward():
            with torch.no_grad():
                model(ids)

        peers = {
            "set_delta": switch,
            "merge swap": merge_swap,
            "from_pretrained": reload,
            "forward (16 tokens)": forward,
        }
        times = {name: [] for name in peers}
        for _ in range(args.repeats):
            base_copies.append(tiny_model())  # a fresh base, not timed
            for name, fn in peers.items():
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1e6)
    print(
        f"tiny model: {total:,} parameters, {k:,} delta entries per delta (rank_equiv={args.rank_equiv}); "
        f"{args.repeats} repeats, round-robin; 1 thread; {cpu_name()}"
    )
    print("| operation | median µs | mean µs |")
    print("|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.0f} | {statistics.mean(values):.0f} |")


if __name__ == "__main__":
    main()
