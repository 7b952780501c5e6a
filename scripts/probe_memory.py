#!/usr/bin/env python
"""Peak memory of SpIEL-AG's probe (the phase's first backward: dense-gradient candidates) on one layer, with the
dense gradient held whole against streamed by row blocks (``spiel.delta.function.PROBE_STREAM_BYTES``).

The peak is the backward's peak memory beyond what was allocated before it (the layer's gradient, the probe's
transients, the candidates and their statistics): on CPU the peak resident set size (as ``scripts/bench_step.py``
measures it), on CUDA ``max_memory_allocated``.

    python scripts/probe_memory.py                           # LLaMA-2-7B MLP shape (11008x4096), fp32, CPU
    python scripts/probe_memory.py --out 4096 --in 4096 --tokens 1024 --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import torch
import torch.nn as nn

from spiel.bench.step import MemoryMeter
from spiel.delta import SparseDeltaLinear, function
from spiel.selection.rules import AccumulatedGradient
from spiel.selection.rules.accumulated_gradient import Phase


def peak_mb(stream: bool | None, args) -> float:
    """The probe backward's peak (MiB): the dense gradient whole, streamed, or (None) no probe at all."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    function.PROBE_STREAM_BYTES = 0 if stream else 1 << 60
    torch.manual_seed(0)
    base = nn.Linear(args.in_features, args.out_features, bias=False).to(device=device, dtype=dtype)
    base.requires_grad_(False)
    k = int(args.density * args.out_features * args.in_features)
    layer = SparseDeltaLinear(base, k)
    x = torch.randn(args.tokens, args.in_features, device=device, dtype=dtype)

    class Rule(AccumulatedGradient):  # only the probe callback; no optimizer or schedule needed
        def __init__(self):
            self.layers, self.phases = {"layer": layer}, {}

    rule = Rule()
    rule.phases["layer"] = Phase()
    if stream is not None:
        layer.request_grad_blocks(rule._on_first_grad_blocks("layer"))  # taken by the next forward
    y = layer(x)
    grad_y = torch.randn_like(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        y.backward(grad_y)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    meter = MemoryMeter(device)
    meter.start()  # peak RSS reset to the RSS now
    y.backward(grad_y)
    peak = meter.extra_mb() * 2**20
    assert stream is None or rule.phases["layer"].candidates is not None, "the probe did not run"
    return peak / 2**20


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", dest="out_features", type=int, default=11008)
    p.add_argument("--in", dest="in_features", type=int, default=4096)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--density", type=float, default=0.0247)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--only", choices=["whole", "streamed", "none"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.only:  # one measurement in this process (a fresh process each: freed memory stays resident)
        print(peak_mb({"whole": False, "streamed": True, "none": None}[args.only], args))
        return 0
    dense_mb = args.out_features * args.in_features * torch.finfo(getattr(torch, args.dtype)).bits / 8 / 2**20
    cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])]
    none, whole, streamed = (
        float(
            subprocess.run(cmd + ["--only", mode], capture_output=True, text=True, check=True).stdout.split()[
                -1
            ]
        )
        for mode in ("none", "whole", "streamed")
    )
    print(
        f"{args.out_features}x{args.in_features}, {args.tokens} tokens, density {args.density}, {args.dtype} on "
        f"{args.device} (the dense gradient alone: {dense_mb:.0f} MiB): backward peak without a probe {none:.0f} MiB; "
        f"with the probe {whole:.0f} MiB (dense gradient whole), {streamed:.0f} MiB (by row blocks)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
