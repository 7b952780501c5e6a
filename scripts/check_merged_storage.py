#!/usr/bin/env python
"""Merged storage against the per-call path on a device (CUDA by default): for fp32 and bf16 bases at a
LLaMA-2-7B layer shape, a few optimizer steps with gradient accumulation and a change of indices, the outputs,
input gradients and values' gradients must be equal bit for bit, and the base must come back bit for bit.
Prints one line per check; exit status 1 if any differs. Needs only torch (and triton for `auto` on CUDA).

    python scripts/check_merged_storage.py                 # cuda
    python scripts/check_merged_storage.py --device cpu --shape 512x384
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch

from spiel.delta import SparseDeltaLinear, random_subset


def check(device: str, dtype: torch.dtype, out_features: int, in_features: int, tokens: int) -> list[str]:
    torch.manual_seed(0)
    base = torch.nn.Linear(in_features, out_features, device=device, dtype=dtype).requires_grad_(False)
    pristine = base.weight.detach().clone()
    k = max(1, out_features * in_features // 40)
    on = SparseDeltaLinear(copy.deepcopy(base), k, generator=torch.Generator().manual_seed(1))
    off = SparseDeltaLinear(
        copy.deepcopy(base), k, generator=torch.Generator().manual_seed(1), merged_storage=False
    )
    problems = []
    for step in range(3):
        if step == 2:  # a reselection: new positions (the selector restores the base before editing in place)
            new = random_subset(out_features * in_features, k, torch.Generator().manual_seed(7), device)
            for layer in (on, off):
                layer.restore_base()
                with torch.no_grad():
                    layer.indices.copy_(new.to(layer.indices.dtype))
        for micro in range(2):
            g = torch.Generator(device=device).manual_seed(100 * step + micro)
            x = torch.randn(tokens, in_features, device=device, generator=g).to(dtype)
            results = []
            for layer in (on, off):
                xi = x.clone().requires_grad_(True)
                y = layer(xi)
                y.float().square().mean().backward()
                results.append((y.detach(), xi.grad))
            for what, a, b in zip(("output", "input gradient"), results[0], results[1], strict=True):
                if not torch.equal(a, b):
                    problems.append(f"step {step} micro-batch {micro}: {what} differs")
        if not torch.equal(on.values.grad, off.values.grad):
            problems.append(f"step {step}: values' gradient differs")
        for layer in (on, off):
            with torch.no_grad():
                layer.values.sub_(layer.values.grad.sign(), alpha=1e-2)  # an optimizer step
            layer.values.grad = None
    on.restore_base()
    if not torch.equal(on.weight, pristine):
        problems.append("the restored base differs from the pristine one")
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--shape", default="4096x4096,11008x4096", help="OUTxIN[,OUTxIN...]")
    p.add_argument("--tokens", type=int, default=1024)
    args = p.parse_args(argv)
    failed = 0
    for shape in args.shape.split(","):
        out_features, in_features = (int(v) for v in shape.split("x"))
        for dtype in (torch.float32, torch.bfloat16):
            problems = check(args.device, dtype, out_features, in_features, args.tokens)
            failed += bool(problems)
            print(
                f"{'OK  ' if not problems else 'FAIL'} merged storage {shape} {dtype} on {args.device}: "
                + (
                    "bit for bit equal to the per-call path; base restored"
                    if not problems
                    else "; ".join(problems)
                ),
                flush=True,
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
