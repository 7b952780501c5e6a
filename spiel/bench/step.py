"""One method's timed training run (run in its own process by ``scripts/bench_step.py``).

A step is what the training loop does per optimizer step: ``accum`` forward/backward passes, the
optimizer step, ``zero_grad`` and (SpIEL) ``selector.step()``. The first ``warmup`` steps are run but
not timed; then ``periods · R`` steps are timed, so every SpIEL-AG estimation phase (its dense-gradient
probe and candidate gathers) and reselection of those periods is inside the timed window.

``floor`` is the physical limit of any method that trains something inside the blocks: the frozen model,
forward and backward to the input embeddings only (no weight gradient, no optimizer).

Memory beyond the frozen model: on CPU the peak resident set size (``VmHWM``, reset after loading via
``/proc/self/clear_refs``) minus the RSS right after the frozen base was built; on CUDA
``max_memory_allocated`` minus what was allocated after loading. Adapters, optimizer state,
gradients, activations and every transient count as extra.
"""

from __future__ import annotations

import contextlib
import re
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch

from spiel.bench.models import (
    LlamaShape,
    equivalent_rank,
    method_config,
    random_llama,
    random_llama_nf4,
    release_free_memory,
    reselects,
    trainable_count,
    wrap_for_training,
)
from spiel.dtypes import DTYPES

STEP_METHODS = ("floor", "full", "lora", "lora0", "ia3", "ag", "ma")
# ``lora0``: LoRA with dropout 0, the LoRA a user picks for speed (dropout 0.1, the paper's, costs a copy of
# every projection's input); ``lora`` keeps the paper's configuration.
# On request only, to measure in the same run what a change saves: ``*_applied``, SpIEL with merged storage off
# (the delta applied and restored in every forward and backward); ``*_loop``, SpIEL computing its steps as it
# did before batching: selection one matrix at a time, the optimizer one parameter at a time, AG's probe
# holding each dense gradient whole.
VARIANTS = {"ag_applied": "ag", "ma_applied": "ma", "ag_loop": "ag", "ma_loop": "ma"}


@dataclass
class StepSpec:
    method: str
    shape: dict = field(default_factory=lambda: LlamaShape().to_dict())
    quant: str = "none"
    seq: int = 512
    batch: int = 1
    accum: int = 1
    dtype: str = "float32"
    device: str = "cpu"
    rank: int | None = None  # None: the paper's density (equivalent_rank)
    reselection_steps: int = 20
    estimation_steps: int = 5
    warmup: int = 2
    periods: int = 2
    steps: int | None = None  # timed steps; None: periods · reselection_steps
    grad_path: str = "auto"
    seed: int = 0
    threads: int | None = None
    memory_fraction: float | None = None  # CUDA: torch.cuda.set_per_process_memory_fraction
    profile: str | None = None  # write a torch.profiler table of the timed steps to this file

    def timed_steps(self) -> int:
        return self.steps if self.steps is not None else self.periods * self.reselection_steps


# -- memory probes -----------------------------------------------------------------------------------------
def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1))


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class MemoryMeter:
    def __init__(self, device: torch.device):
        self.device = device
        self.base = 0

    def start(self) -> None:
        release_free_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.base = _status_kib("VmRSS") * 1024
            if not reset_peak_rss():
                raise RuntimeError(
                    "cannot reset the peak RSS (/proc/self/clear_refs); CPU memory figures need Linux"
                )

    def base_mb(self) -> float:
        return self.base / 2**20

    def extra_mb(self) -> float:
        if self.device.type == "cuda":
            return (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        return (_status_kib("VmHWM") * 1024 - self.base) / 2**20


# -- what a tunable entry costs, and where reselection time goes -----------------------------------------------
def bytes_per_entry(model, optimizer) -> dict:
    """Bytes held per trainable entry while training: values, their gradient, every optimizer state tensor
    with one entry per value (moments, per-slot ages), and for SpIEL the index, ``grown_at`` and the base
    values merged storage keeps at the active positions. Per-tensor
    state of another size (SM3's row/column accumulators) is reported apart, spread over the entries."""
    per_entry = shared = 0
    entries = 0
    deltas = getattr(model, "deltas", None)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for p in params:
        n = p.numel()
        entries += n
        per_entry += 2 * p.element_size() * n  # value and gradient
        for value in optimizer.state.get(p, {}).values():
            if torch.is_tensor(value) and value.dim() > 0:
                if value.shape == p.shape:
                    per_entry += value.element_size() * n
                else:
                    shared += value.element_size() * value.numel()
    if deltas:
        for layer in deltas.values():
            per_entry += (layer.indices.element_size() + layer.grown_at.element_size()) * layer.k
            per_entry += layer.merged_storage_nbytes
    return {
        "per_entry": per_entry / max(1, entries),
        "shared_per_entry": shared / max(1, entries),
        "entries": entries,
    }


def step_kind(selector, t_after: int) -> str:
    """What the optimizer step that just made ``selector.t == t_after`` did beyond a plain step."""
    if selector is None or not selector.reselects:
        return "plain"
    schedule = selector.schedule
    if schedule.is_reselection(t_after):
        return "reselect"
    if selector.estimates_gradients and schedule.starts_phase(t_after - 1):
        return "probe"  # the phase's first step: dense gradient and top-k candidates
    if selector.estimates_gradients and schedule.in_estimation_phase(t_after - 1):
        return "estimate"
    return "plain"


def reselection_cost(times: list[float], kinds: list[str], periods: float) -> dict:
    """Extra time per reselection period of each non-plain kind of step, over the plain median step, in
    seconds and in plain median steps."""
    plain = [t for t, k in zip(times, kinds, strict=True) if k == "plain"]
    base = statistics.median(plain) if plain else statistics.median(times)
    out = {"plain_median_s": base}
    total = 0.0
    for kind in ("probe", "estimate", "reselect"):
        extra = sum(t - base for t, k in zip(times, kinds, strict=True) if k == kind) / max(periods, 1e-9)
        out[f"{kind}_s_per_period"] = extra
        total += extra
    out["extra_s_per_period"] = total
    out["extra_steps_per_period"] = total / base
    return out


# -- the run ---------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Profiler:
    """``torch.profiler`` over the timed steps, each a ``## step <kind>`` region holding forward/backward/
    optimizer/selector regions; a no-op without a path. Writes the table (regions, then the top operators by
    self time) to ``path``, the breakdown by kind of step (``spiel.bench.profile``) to ``<path>.breakdown.json``
    and the Chrome trace to ``<path>.trace.json``."""

    def __init__(self, path: str | None, device: torch.device):
        self.path, self.device, self.prof = path, device, None

    def start(self) -> None:
        if self.path:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + (
                [ProfilerActivity.CUDA] if self.device.type == "cuda" else []
            )
            self.prof = profile(activities=activities)
            self.prof.__enter__()

    def region(self, name: str):
        if self.prof is None:
            return contextlib.nullcontext()
        return torch.profiler.record_function(f"## {name}")

    def stop(self) -> dict | None:
        if self.prof is None:
            return None
        from spiel.bench.profile import breakdown, write_breakdown

        self.prof.__exit__(None, None, None)
        events = self.prof.key_averages()
        sort = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        regions = [e for e in events if e.key.startswith("## ")]
        lines = ["regions (total time over the timed steps):"]
        lines += [f"  {e.key[3:]:<16} {e.cpu_time_total / 1e6:8.3f} s  ({e.count} calls)" for e in regions]
        lines += ["", events.table(sort_by=sort, row_limit=30)]
        with open(self.path, "w") as f:
            f.write("\n".join(lines))
        result = breakdown(self.prof.events(), self.device.type == "cuda")
        write_breakdown(f"{self.path}.breakdown.json", result)
        self.prof.export_chrome_trace(f"{self.path}.trace.json")
        self.prof = None
        return result


def build(spec: StepSpec):
    """The frozen base (fp32/bf16 or NF4) on the spec's device, and its shape."""
    shape = LlamaShape(**spec.shape)
    device = torch.device(spec.device)
    dtype = DTYPES[spec.dtype]
    if spec.quant == "nf4":
        return random_llama_nf4(shape, spec.seq, dtype, spec.device, spec.seed), shape
    if spec.quant != "none":
        raise ValueError(f"quant must be none or nf4, got {spec.quant!r}")
    return random_llama(shape, spec.seq, dtype, device, spec.seed), shape


def run(spec: StepSpec) -> dict:
    """Time ``spec.method``'s optimizer steps and measure its extra memory; returns a JSON-able dict."""
    if spec.method not in STEP_METHODS + tuple(VARIANTS):
        raise ValueError(f"method must be one of {STEP_METHODS + tuple(VARIANTS)}, got {spec.method!r}")
    method = VARIANTS.get(spec.method, spec.method)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    device = torch.device(spec.device)
    if spec.memory_fraction is not None and device.type == "cuda":
        torch.cuda.set_per_process_memory_fraction(spec.memory_fraction, device)
    model, shape = build(spec)
    rank = spec.rank or equivalent_rank(shape)
    gen = torch.Generator().manual_seed(spec.seed + 1)
    total = spec.warmup + spec.timed_steps()
    batches = [
        torch.randint(0, shape.vocab, (spec.batch, spec.seq), generator=gen).to(device)
        for _ in range(min(total * spec.accum, 8))
    ]
    meter = MemoryMeter(device)
    meter.start()

    optimizer = selector = None
    quantized = spec.quant == "nf4"
    if spec.method == "floor":
        model.requires_grad_(False)
        embed = model.get_input_embeddings()
        trainable = 0
    else:
        name = "lora" if method == "lora0" else method
        mcfg = method_config(
            name,
            rank,
            reselection_steps=spec.reselection_steps,
            estimation_steps=spec.estimation_steps,
            grad_path=spec.grad_path,
        )
        if spec.method == "lora0":
            mcfg.dropout = 0.0
        model, optimizer = wrap_for_training(name, model, mcfg, seed=spec.seed, quantized=quantized)
        if spec.method.endswith("_applied"):
            for layer in model.deltas.values():
                layer.merged_storage = False
        if reselects(method):
            # A horizon one period past the run: every period in the timed window is a whole one (its phase
            # start, the AG probe, is not dropped for ending after the run), as in the middle of a long run.
            selector = model.make_selector(optimizer, total_steps=total + spec.reselection_steps)
            if spec.method.endswith("_loop"):
                selector.batched = optimizer.foreach = False
                selector.rule.streams_candidates = False
        trainable = trainable_count(method, model)
    model.train()

    profiler = _Profiler(spec.profile, device)
    times, cpu_times, kinds, losses = [], [], [], []
    footprint = None
    micro = 0
    for step in range(total):
        if step == spec.warmup:
            profiler.start()
        kind = step_kind(selector, selector.t + 1 if selector is not None else step + 1)
        step_region = profiler.region(f"step {kind}")
        step_region.__enter__()
        _sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(spec.accum):
            ids = batches[micro % len(batches)]
            micro += 1
            with profiler.region("forward"):
                if spec.method == "floor":
                    embeds = embed(ids).detach().requires_grad_(True)
                    loss = model(inputs_embeds=embeds, labels=ids).loss
                else:
                    loss = model(input_ids=ids, labels=ids).loss
            with profiler.region("backward"):
                (loss / spec.accum).backward()
        with profiler.region("optimizer"):
            if optimizer is not None:
                optimizer.step()
                if footprint is None:  # gradients and optimizer state all exist now
                    footprint = bytes_per_entry(model, optimizer)
                optimizer.zero_grad(set_to_none=True)
        with profiler.region("selector"):
            if selector is not None:
                selector.step()
        _sync(device)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        step_region.__exit__(None, None, None)
        if step >= spec.warmup:
            times.append(elapsed)
            cpu_times.append(cpu)
            kinds.append(kind)
        losses.append(float(loss.detach()))
    profile = profiler.stop()
    if selector is not None:
        selector.close()
    info = {"threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_mem_gib=props.total_memory / 2**30)
    return {
        **info,
        "method": spec.method,
        "quant": spec.quant,
        "step_s": times,
        "step_s_median": statistics.median(times),
        "step_s_mean": statistics.fmean(times),
        # CPU seconds of this process (all threads) per step: on a shared box less sensitive to the
        # neighbours than wall time, which is what the steps cost when they have the cores to themselves.
        "cpu_s": cpu_times,
        "cpu_s_median": statistics.median(cpu_times),
        "cpu_s_mean": statistics.fmean(cpu_times),
        "extra_mem_mb": meter.extra_mb(),
        "base_mem_mb": meter.base_mb(),
        "trainable": trainable,
        "rank": rank,
        "final_loss": losses[-1],
        "bytes_per_entry": footprint,
        "step_kinds": kinds,
        "reselection": reselection_cost(times, kinds, len(times) / spec.reselection_steps)
        if selector is not None
        else None,
        "reselection_cpu": reselection_cost(cpu_times, kinds, len(times) / spec.reselection_steps)
        if selector is not None
        else None,
        "spec": asdict(spec),
        **({"profile": profile} if profile is not None else {}),
    }
