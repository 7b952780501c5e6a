"""Benchmark helpers behind ``scripts/bench_step.py`` (time and memory per optimizer step, the paper's
Table 3) and ``scripts/bench_quality.py`` (a CPU mini-Table 1 on the tiny base and the demo task).

``models`` (shapes, budgets, random LLaMA bases, method configs) and ``step`` (one method's timed run)
import only torch, transformers and peft, so the CUDA path works on a machine without hydra, datasets,
bitsandbytes or wandb.
"""
