"""Per-GPU memory of a training run, by component, from the model's shapes and the run's settings.

Every figure is arithmetic on shapes and dtypes; where it comes from is said next to it. Activations are
the tensors autograd keeps for backward in a LLaMA decoder layer as transformers computes it (RMSNorm in
fp32, SDPA attention, SiLU-gated MLP); the inputs of trainable linear layers are kept for their
gradients. The planner is checked against measured peaks (spiel.planning.measure, tests/planning/test_plan.py).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

from spiel.planning.shapes import ModelShape
from spiel.training.methods import METHOD_REGISTRY, get_method
from spiel.training.methods.spiel_methods import spiel_budget

__all__ = ["Estimate", "RunPlan", "cheapest_fit", "estimate", "spiel_budget"]

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# bitsandbytes NF4 with double quantization: 4 bits per weight, one 8-bit absmax per 64 weights, and one
# fp32 scale per 256 absmax blocks.
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
PARALLEL = ("none", "ddp", "fsdp")


@dataclass(frozen=True)
class RunPlan:
    method: str = "ag"  # ag | ma | lora | full
    rank_equiv: int | None = None  # SpIEL budget (none of the three: rank_equiv 64)
    density: float | None = None
    num_tunable: int | None = None
    lora_r: int = 64
    target_modules: object = None
    dtype: str = "bfloat16"  # the frozen base (and compute) dtype
    quant: str = "none"  # none | nf4
    delta_dtype: str | None = None  # null: float32, bfloat16 on an NF4 base
    micro_batch_size: int = 1
    seq_len: int = 2048
    activation_checkpointing: bool = False
    gpus: int = 1
    parallel: str = "none"  # none (1 GPU) | ddp | fsdp
    device: str = "cuda"  # cuda | cpu: some work chunks by the device (SpIEL-MA's reselection scores)

    def check(self) -> None:
        def need(ok, key, message):
            if not ok:
                raise ValueError(f"{key}: {message}")

        planned = [name for name, method in METHOD_REGISTRY.items() if method.planned]
        need(self.method in planned, "method", f"planned: {', '.join(planned)}; got {self.method!r}")
        need(self.dtype in DTYPE_BYTES, "dtype", f"must be one of {sorted(DTYPE_BYTES)}, got {self.dtype!r}")
        need(self.quant in ("none", "nf4"), "quant", f"must be none or nf4, got {self.quant!r}")
        need(self.parallel in PARALLEL, "parallel", f"must be one of {PARALLEL}, got {self.parallel!r}")
        need(self.gpus >= 1, "gpus", f"must be >= 1, got {self.gpus}")
        need(self.device in ("cuda", "cpu"), "device", f"must be cuda or cpu, got {self.device!r}")
        need(
            self.parallel != "none" or self.gpus == 1,
            "parallel",
            "none means one GPU: use ddp or fsdp with gpus > 1",
        )
        need(
            not (self.parallel == "fsdp" and self.quant == "nf4"),
            "parallel",
            "fsdp shards a bf16/fp32 base; with quant=nf4 use ddp",
        )
        need(
            get_method(self.method).supports_quant or self.quant != "nf4",
            "quant",
            f"{self.method} fine-tuning cannot train NF4 weights",
        )
        need(
            self.micro_batch_size >= 1 and self.seq_len >= 1,
            "micro_batch_size",
            "micro-batch and sequence must be >= 1",
        )

    @property
    def value_dtype(self) -> str:
        """The dtype of the trained values (the method's)."""
        return get_method(self.method).trainable_dtype(self.delta_dtype, self.quant, self.dtype)

    @property
    def compute_dtype(self) -> str:
        return "bfloat16" if self.quant == "nf4" else self.dtype


@dataclass
class Estimate:
    plan: RunPlan
    parts: dict[str, float] = field(default_factory=dict)  # bytes per GPU
    notes: dict[str, str] = field(default_factory=dict)
    trainable: int = 0

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def fits(self, gpu_bytes: float) -> bool:
        return self.total <= gpu_bytes


def activation_bytes_per_token_layer(shape: ModelShape, plan: RunPlan) -> float:
    """Bytes autograd keeps per token in one decoder layer (no checkpointing)."""
    s = DTYPE_BYTES[plan.compute_dtype]
    h, m = shape.hidden, shape.intermediate
    q = shape.heads * shape.head_dim
    norms = 2 * (4 * h + 4)  # RMSNorm: its input upcast to fp32 and 1/rms per token, twice per layer
    attention = 4 * q * s + 4 * shape.heads  # SDPA keeps q, k, v (repeated to all heads) and its output + lse
    mlp = 3 * m * s  # SiLU input, and both factors of act(gate) * up
    return norms + attention + mlp + get_method(plan.method).plan_linear_inputs(shape, plan, s)


def estimate(shape: ModelShape, plan: RunPlan) -> Estimate:
    plan.check()
    est = Estimate(plan)
    base_bytes = DTYPE_BYTES[plan.dtype]
    compute = DTYPE_BYTES[plan.compute_dtype]
    tokens = plan.micro_batch_size * plan.seq_len
    shards = plan.gpus if plan.parallel == "fsdp" else 1

    # -- frozen base -------------------------------------------------------------------------------------
    linears = shape.linears()
    blocks = shape.targets(None)  # bitsandbytes quantizes every linear layer but the output head
    quantized = sum(o * i for n, (o, i) in linears.items() if n in blocks) if plan.quant == "nf4" else 0
    rest = shape.total_params - quantized
    method = get_method(plan.method)
    rest_bytes = (4 if method.upcasts_rest_on_nf4 else compute) if plan.quant == "nf4" else base_bytes
    est.parts["base weights"] = (quantized * NF4_BYTES + rest * rest_bytes) / shards + shape.buffer_bytes
    est.notes["base weights"] = (
        f"{shape.total_params / 1e9:.2f}B params, "
        + (f"NF4 targets + {plan.compute_dtype} rest" if plan.quant == "nf4" else plan.dtype)
        + (f", sharded over {shards}" if shards > 1 else "")
    )
    if shards > 1:  # FSDP2 gathers one layer while prefetching the next
        est.parts["FSDP gathered layers"] = 2 * shape.layer_params * base_bytes * (1 - 1 / shards)

    # -- what is trained ---------------------------------------------------------------------------------
    est.trainable, parts = method.plan_trained(shape, plan, DTYPE_BYTES[plan.value_dtype], base_bytes, shards)
    est.parts.update(parts)

    # -- activations -------------------------------------------------------------------------------------
    per_layer = activation_bytes_per_token_layer(shape, plan) * tokens
    if plan.activation_checkpointing:  # each block keeps its input; one block is recomputed at a time
        est.parts["activations"] = shape.layers * tokens * shape.hidden * compute + per_layer
    else:
        est.parts["activations"] = shape.layers * per_layer
    # logits, their fp32 copy for the loss and log-softmax's output; the gradient of the logits
    est.parts["logits and loss"] = tokens * shape.vocab * (compute + 4 + 4 + compute)
    return est


# Relative step cost of each choice, for "cheapest setting that fits": sharding costs communication,
# NF4 dequantization, checkpointing a second forward, and a smaller micro-batch less parallel work.
COST = {"fsdp": 1.1, "nf4": 1.25, "checkpointing": 1.33, "halved micro-batch": 1.1}


def candidates(plan: RunPlan):
    multi = ("ddp", "fsdp") if plan.gpus > 1 else ("none",)
    quants = ("none", "nf4") if get_method(plan.method).supports_quant else ("none",)
    sizes = []
    mb = plan.micro_batch_size
    while mb >= 1:
        sizes.append(mb)
        mb //= 2
    for parallel, quant, ckpt, mb in itertools.product(multi, quants, (False, True), sizes):
        if parallel == "fsdp" and quant == "nf4":
            continue
        cost = (
            (COST["fsdp"] if parallel == "fsdp" else 1)
            * (COST["nf4"] if quant == "nf4" else 1)
            * (COST["checkpointing"] if ckpt else 1)
            * COST["halved micro-batch"] ** sizes.index(mb)
        )
        yield (
            cost,
            replace(plan, parallel=parallel, quant=quant, activation_checkpointing=ckpt, micro_batch_size=mb),
        )


def cheapest_fit(shape: ModelShape, plan: RunPlan, gpu_bytes: float) -> Estimate | None:
    """The least costly variant of ``plan`` (parallelism, quantization, checkpointing, micro-batch) that
    fits ``gpu_bytes`` per GPU, or None."""
    options = sorted(candidates(plan), key=lambda pair: pair[0])
    for _, option in options:
        est = estimate(shape, option)
        if est.fits(gpu_bytes):
            return est
    return None
