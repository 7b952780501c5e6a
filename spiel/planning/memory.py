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

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# bitsandbytes NF4 with double quantization: 4 bits per weight, one 8-bit absmax per 64 weights, and one
# fp32 scale per 256 absmax blocks.
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
INT32_LIMIT = 2**31
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

    def check(self) -> None:
        def need(ok, key, message):
            if not ok:
                raise ValueError(f"{key}: {message}")

        need(self.method in ("ag", "ma", "lora", "full"), "method", f"planned: ag, ma, lora, full; got {self.method!r}")
        need(self.dtype in DTYPE_BYTES, "dtype", f"must be one of {sorted(DTYPE_BYTES)}, got {self.dtype!r}")
        need(self.quant in ("none", "nf4"), "quant", f"must be none or nf4, got {self.quant!r}")
        need(self.parallel in PARALLEL, "parallel", f"must be one of {PARALLEL}, got {self.parallel!r}")
        need(self.gpus >= 1, "gpus", f"must be >= 1, got {self.gpus}")
        need(self.parallel != "none" or self.gpus == 1, "parallel", "none means one GPU: use ddp or fsdp with gpus > 1")
        need(not (self.parallel == "fsdp" and self.quant == "nf4"), "parallel",
             "fsdp shards a bf16/fp32 base; with quant=nf4 use ddp")
        need(not (self.method == "full" and self.quant == "nf4"), "quant", "full fine-tuning cannot train NF4 weights")
        need(self.micro_batch_size >= 1 and self.seq_len >= 1, "micro_batch_size", "micro-batch and sequence must be >= 1")

    @property
    def value_dtype(self) -> str:
        return self.delta_dtype or ("bfloat16" if self.quant == "nf4" else "float32")

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


def spiel_budget(shape: ModelShape, plan: RunPlan) -> dict[str, int]:
    """Entries per target, exactly as get_spiel_model allocates them."""
    from spiel.model.targets import allocate, total_budget
    from spiel.spiel_config import SpielConfig

    config = SpielConfig(method=plan.method, rank_equiv=plan.rank_equiv, density=plan.density,
                         num_tunable=plan.num_tunable, target_modules=plan.target_modules)
    targets = shape.targets(plan.target_modules)
    return allocate(total_budget(config, shape.meta_model, targets), targets)


def activation_bytes_per_token_layer(shape: ModelShape, plan: RunPlan) -> float:
    """Bytes autograd keeps per token in one decoder layer (no checkpointing)."""
    s = DTYPE_BYTES[plan.compute_dtype]
    h, m = shape.hidden, shape.intermediate
    q = shape.heads * shape.head_dim
    norms = 2 * (4 * h + 4)  # RMSNorm: its input upcast to fp32 and 1/rms per token, twice per layer
    attention = 4 * q * s + 4 * shape.heads  # SDPA keeps q, k, v (repeated to all heads) and its output + lse
    mlp = 3 * m * s  # SiLU input, and both factors of act(gate) * up
    if plan.method in ("ag", "ma", "full"):
        # trainable linear layers keep their inputs: shared by q/k/v and by gate/up; o_proj and down_proj
        linear_inputs = (2 * h + q + m) * s
    else:  # LoRA: each adapted layer keeps its dropped-out input, the dropout mask and A's output
        # (the inputs of q, k, v, gate and up have h features, o_proj's q, down_proj's m)
        linear_inputs = sum(i * (s + 1) + plan.lora_r * s for i in (h, h, h, q, h, h, m))
    return norms + attention + mlp + linear_inputs


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
    rest_bytes = 4 if plan.quant == "nf4" and plan.method == "lora" else DTYPE_BYTES[plan.compute_dtype]
    if plan.quant != "nf4":
        rest_bytes = base_bytes
    est.parts["base weights"] = (quantized * NF4_BYTES + rest * rest_bytes) / shards + shape.buffer_bytes
    est.notes["base weights"] = (f"{shape.total_params / 1e9:.2f}B params, "
                                 + (f"NF4 targets + {plan.compute_dtype} rest" if plan.quant == "nf4" else plan.dtype)
                                 + (f", sharded over {shards}" if shards > 1 else ""))
    if shards > 1:  # FSDP2 gathers one layer while prefetching the next
        est.parts["FSDP gathered layers"] = 2 * shape.layer_params * base_bytes * (1 - 1 / shards)

    # -- what is trained ---------------------------------------------------------------------------------
    value_bytes = DTYPE_BYTES[plan.value_dtype]
    if plan.method in ("ag", "ma"):
        sizes = spiel_budget(shape, plan)
        targets = shape.targets(plan.target_modules)
        k = sum(sizes.values())
        index_bytes = sum(sizes[n] * (4 if o * i < INT32_LIMIT else 8) for n, (o, i) in targets.items())
        est.trainable = k
        est.parts["deltas"] = index_bytes + k * (value_bytes + 4)  # indices, values, grown_at (int32)
        if plan.method == "ag":
            est.parts["optimizer state"] = k * (4 + 4)  # Adam m, v (fp32); the ages derive from grown_at
            # the first micro-batch of an estimation phase forms each target's dense dL/dW in turn; the
            # phase then keeps k candidates (int64) and three fp32 statistics
            biggest = max(o * i for o, i in targets.values())
            est.parts["AG growth probe"] = biggest * compute + k * (8 + 4 * 3)
        else:
            est.parts["optimizer state"] = sum(4 * (o + i) for o, i in targets.values())  # SM3 row/col
        est.parts["gradients"] = k * value_bytes * (2 if plan.parallel == "ddp" else 1)  # + DDP buckets
    elif plan.method == "lora":
        targets = shape.targets(plan.target_modules)
        n = plan.lora_r * sum(o + i for o, i in targets.values())
        est.trainable = n
        est.parts["adapters"] = n * value_bytes
        est.parts["optimizer state"] = n * 8  # AdamW m, v in fp32 (torch keeps the parameter dtype: fp32)
        est.parts["gradients"] = n * value_bytes * (2 if plan.parallel == "ddp" else 1)
    else:  # full fine-tuning: every weight trains (AdamW state in the parameter dtype)
        est.trainable = shape.total_params
        est.parts["optimizer state"] = shape.total_params * 2 * base_bytes / shards
        est.parts["gradients"] = shape.total_params * base_bytes / shards * (2 if plan.parallel == "ddp" else 1)

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
    quants = ("none", "nf4") if plan.method != "full" else ("none",)
    sizes = []
    mb = plan.micro_batch_size
    while mb >= 1:
        sizes.append(mb)
        mb //= 2
    for parallel, quant, ckpt, mb in itertools.product(multi, quants, (False, True), sizes):
        if parallel == "fsdp" and quant == "nf4":
            continue
        cost = ((COST["fsdp"] if parallel == "fsdp" else 1) * (COST["nf4"] if quant == "nf4" else 1)
                * (COST["checkpointing"] if ckpt else 1) * COST["halved micro-batch"] ** sizes.index(mb))
        yield cost, replace(plan, parallel=parallel, quant=quant, activation_checkpointing=ckpt, micro_batch_size=mb)


def cheapest_fit(shape: ModelShape, plan: RunPlan, gpu_bytes: float) -> Estimate | None:
    """The least costly variant of ``plan`` (parallelism, quantization, checkpointing, micro-batch) that
    fits ``gpu_bytes`` per GPU, or None."""
    options = sorted(candidates(plan), key=lambda pair: pair[0])
    for _, option in options:
        est = estimate(shape, option)
        if est.fits(gpu_bytes):
            return est
    return None
