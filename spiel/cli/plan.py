"""spiel-plan: per-GPU memory of a spiel-train run before renting GPUs, from the model's config alone.

    spiel-plan model=llama2-7b method=ag                         # the training config's keys, as for spiel-train
    spiel-plan --gpus 8 --gpu-memory 80 model=llama2-70b method=ag quant=nf4 micro_batch_size=4
    spiel-plan --table                                           # LLaMA-2 7B/13B/70B, SpIEL-AG/-MA and LoRA

Prints each component (base weights, deltas or adapters, optimizer state, gradients, the AG growth probe,
activations, logits) for the run as configured, whether it fits ``--gpu-memory`` GiB, and the cheapest
setting that fits (parallelism, quantization, activation checkpointing, micro-batch).
"""

from __future__ import annotations

import argparse
import sys

from spiel.planning.memory import GIB, RunPlan, cheapest_fit, estimate
from spiel.planning.shapes import ModelShape
from spiel.training.methods import METHOD_REGISTRY, get_method


def plan_from_config(cfg, gpus: int, parallel: str | None = None) -> tuple[str, RunPlan]:
    """(model name, RunPlan) from a composed spiel-train config; ConfigError names a bad key."""
    from spiel.training.config.hydra_config import validate

    settings = validate(cfg, world_size=gpus)
    c, m = settings.cfg, settings.method
    dtype = settings.dtype if settings.dtype != "auto" else "bfloat16"  # auto: bf16 on a current GPU
    parallel = "none" if gpus == 1 else (parallel or c.parallel)  # the config's default is ddp
    common = dict(
        method=m.name,
        dtype=dtype,
        quant=settings.quant,
        micro_batch_size=c.micro_batch_size,
        seq_len=c.max_seq_len or c.data.get("max_seq_len") or 2048,
        activation_checkpointing=c.activation_checkpointing,
        gpus=gpus,
        parallel=parallel,
    )
    return c.model["name_or_path"], RunPlan(**get_method(m.name).plan_fields(m), **common)


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import spiel.training.config.hydra_config  # noqa: F401  (registers the schemas train.yaml names)
    from spiel.paths import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def describe(plan: RunPlan) -> str:
    budget = get_method(plan.method).describe_budget(plan)
    return (
        f"{plan.method} ({budget}), {plan.quant if plan.quant != 'none' else plan.dtype} base, "
        f"{plan.gpus} GPU(s) {plan.parallel}, micro-batch {plan.micro_batch_size} × {plan.seq_len} tokens, "
        f"checkpointing {'on' if plan.activation_checkpointing else 'off'}"
    )


def report(shape: ModelShape, plan: RunPlan, gpu_gib: float) -> str:
    est = estimate(shape, plan)
    lines = [f"{shape.name}: {describe(plan)}", f"  trainable: {est.trainable:,}"]
    for part, value in est.parts.items():
        note = f"  ({est.notes[part]})" if part in est.notes else ""
        lines.append(f"  {part:<22}{value / GIB:9.2f} GiB{note}")
    verdict = "fits" if est.fits(gpu_gib * GIB) else "does NOT fit"
    lines.append(f"  {'total per GPU':<22}{est.total / GIB:9.2f} GiB: {verdict} in {gpu_gib:g} GiB")
    best = cheapest_fit(shape, plan, gpu_gib * GIB)
    if best is None:
        lines.append(
            f"  nothing fits in {gpu_gib:g} GiB per GPU with {plan.gpus} GPU(s): add GPUs or lower the budget"
        )
    elif best.plan != plan:
        lines.append(f"  cheapest setting that fits: {describe(best.plan)} -> {best.total / GIB:.2f} GiB")
    return "\n".join(lines)


TABLE_MODELS = ("meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-13b-hf", "meta-llama/Llama-2-70b-hf")
TABLE_METHODS = tuple(
    name for name, m in METHOD_REGISTRY.items() if m.planned and m.supports_quant
)  # ag ma lora


def table(gpu_gib: float = 80, seq_len: int = 2048) -> str:
    """Markdown: one GPU, micro-batch 1 × ``seq_len``, budget rank 64, bf16 or NF4 base; totals without and
    with activation checkpointing."""
    rows = [
        f"| model | method | base | base weights | trained state | activations + logits (ckpt off / on) | "
        f"total, ckpt off | total, ckpt on | fits {gpu_gib:g} GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in TABLE_MODELS:
        shape = ModelShape.from_name(name)
        for method in TABLE_METHODS:
            for quant in ("none", "nf4"):
                off, on = (
                    estimate(
                        shape,
                        RunPlan(method=method, quant=quant, seq_len=seq_len, activation_checkpointing=ckpt),
                    )
                    for ckpt in (False, True)
                )
                p = off.parts
                trained = sum(
                    v
                    for k, v in p.items()
                    if k in ("deltas", "adapters", "optimizer state", "gradients", "AG growth probe")
                )
                acts = [e.parts["activations"] + e.parts["logits and loss"] for e in (off, on)]
                fits = "yes" if off.fits(gpu_gib * GIB) else "with ckpt" if on.fits(gpu_gib * GIB) else "no"
                rows.append(
                    f"| {name.split('/')[-1]} | {method} | {'NF4' if quant == 'nf4' else 'bf16'} | "
                    f"{p['base weights'] / GIB:.1f} | {trained / GIB:.1f} | {acts[0] / GIB:.1f} / "
                    f"{acts[1] / GIB:.1f} | {off.total / GIB:.1f} | {on.total / GIB:.1f} | {fits} |"
                )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="spiel-plan",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--gpus", type=int, default=1, help="GPUs in all (default 1)")
    parser.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU (default 80)")
    parser.add_argument(
        "--parallel",
        choices=("none", "ddp", "fsdp"),
        default=None,
        help="default: the config's parallel, else ddp for several GPUs",
    )
    parser.add_argument("--table", action="store_true", help="the LLaMA-2 7B/13B/70B table")
    parser.add_argument("overrides", nargs="*", help="spiel-train overrides (model=llama2-7b method=ag ...)")
    args = parser.parse_args(argv)
    from spiel.training.config.schema import ConfigError

    if args.table:
        print(table(args.gpu_memory))
        return 0
    if args.gpus < 1 or args.gpu_memory <= 0:
        print("spiel-plan: --gpus must be >= 1 and --gpu-memory > 0", file=sys.stderr)
        return 2
    try:
        name, plan = plan_from_config(compose(args.overrides), args.gpus, args.parallel)
        plan.check()
        shape = ModelShape.from_name(name)
    except (ConfigError, ValueError) as e:
        print(f"spiel-plan: {e}", file=sys.stderr)
        return 2
    print(report(shape, plan, args.gpu_memory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
