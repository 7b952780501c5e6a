"""spiel-plan against measured peaks on CPU: the tiny model and the benchmark model (hidden 1024, 4 layers).

    python scripts/plan_check.py            # markdown table: planned, measured (live tensor bytes), ratio

Measured = parameters and buffers + the highest point of torch.profiler's allocation curve over 4 optimizer
steps (spiel.planning.measure); fp32 base, SpIEL rank_equiv 4 (tiny) / 16 (bench), LoRA of the same rank.
"""

from __future__ import annotations

import sys
import time

from spiel.bench.models import CPU_DEFAULT, llama_config
from spiel.planning import ModelShape, RunPlan, estimate
from spiel.planning.measure import measure_peak

CASES = [  # (model, method, checkpointing, micro-batch, tokens)
    ("tiny", "ag", False, 2, 64),
    ("tiny", "ma", False, 2, 64),
    ("tiny", "lora", False, 2, 64),
    ("tiny", "ag", True, 4, 128),
    ("bench", "ag", False, 2, 64),
    ("bench", "ma", False, 2, 64),
    ("bench", "lora", False, 2, 64),
    ("bench", "ma", True, 2, 128),
]


def main() -> None:
    bench = llama_config(CPU_DEFAULT, 512)
    shapes = {"tiny": ModelShape.from_name("tiny"), "bench": ModelShape.from_config(bench, "bench")}
    print(
        "| model | method | checkpointing | micro-batch × tokens | planned MiB | measured MiB | planned / measured |"
    )
    print("|---|---|---|---|---|---|---|")
    for model, method, ckpt, micro, seq in CASES:
        rank = 4 if model == "tiny" else 16
        plan = RunPlan(
            method=method,
            rank_equiv=rank,
            lora_r=rank,
            dtype="float32",
            micro_batch_size=micro,
            seq_len=seq,
            activation_checkpointing=ckpt,
            device="cpu",  # measured here, on the CPU
        )
        start = time.time()
        measured = measure_peak("tiny" if model == "tiny" else bench, plan)["peak"]
        planned = estimate(shapes[model], plan).total
        print(
            f"| {model} | {method} | {'on' if ckpt else 'off'} | {micro} × {seq} | {planned / 2**20:.2f} | "
            f"{measured / 2**20:.2f} | {planned / measured:.3f} |",
            flush=True,
        )
        print(f"  ({time.time() - start:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
