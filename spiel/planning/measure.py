"""Measured peak memory of a few training steps on CPU, to check the planner against.

The model is built from its config with random weights (what is measured does not depend on them). The
peak is the bytes of live tensors: the model's parameters and buffers before training (counted exactly),
plus the highest point of the allocation curve recorded by ``torch.profiler`` (``profile_memory``) over
the training steps, which covers optimizer state, gradients, activations and the selector's transients.
Unlike peak RSS it is not blurred by the allocator, the interpreter or the libraries.
"""

from __future__ import annotations

import torch

from spiel.planning.memory import RunPlan
from spiel.planning.shapes import load_config
from spiel.training.methods import get_method
from spiel.training.methods.peft_methods import LoraMethod


def _tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def _build(model, plan: RunPlan, seed: int):
    from transformers import AutoModelForCausalLM

    config = load_config(model) if isinstance(model, str) else model
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, plan.dtype))
    if get_method(plan.method).is_sparse:
        from spiel.model.spiel_model import get_spiel_model
        from spiel.spiel_config import SpielConfig

        model = get_spiel_model(
            model,
            SpielConfig(
                method=plan.method,
                rank_equiv=plan.rank_equiv,
                density=plan.density,
                num_tunable=plan.num_tunable,
                target_modules=plan.target_modules,
                reselection_steps=3,
                estimation_steps=2,
                delta_dtype=plan.delta_dtype or "float32",
                seed=seed,
            ),
        )
        optimizer = model.make_optimizer(1e-4)
        selector = model.make_selector(optimizer, total_steps=100)
    elif isinstance(get_method(plan.method), LoraMethod):
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=plan.lora_r,
                lora_alpha=16,
                lora_dropout=0.1,
                target_modules=plan.target_modules or "all-linear",
                task_type="CAUSAL_LM",
            ),
        )
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        selector = None
    else:
        raise ValueError(f"measuring method {plan.method!r} is not supported (ag, ma, lora)")
    if plan.activation_checkpointing:
        from spiel.training.engine.run import enable_activation_checkpointing

        enable_activation_checkpointing(model)
    model.train()
    return model, optimizer, selector, config.vocab_size


def measure_peak(model, plan: RunPlan, steps: int = 4, seed: int = 0) -> dict:
    """``{"static": bytes of parameters and buffers, "peak": static + the highest allocation during
    ``steps`` optimizer steps}`` of one process (``plan.micro_batch_size`` × ``plan.seq_len`` tokens).
    ``model``: a name for ``load_config`` or a transformers config."""
    if plan.device != "cpu":
        raise ValueError(f"measure_peak measures on the CPU: plan with device='cpu', not {plan.device!r}")
    model, optimizer, selector, vocab = _build(model, plan, seed)
    static = _tensor_bytes([*model.parameters(), *model.buffers()])
    generator = torch.Generator().manual_seed(seed)
    batches = [
        torch.randint(4, vocab, (plan.micro_batch_size, plan.seq_len), generator=generator)
        for _ in range(steps)
    ]
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        for ids in batches:
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if selector is not None:
                selector.step()
    # every allocation and free, in order (prof.events() would fold them into the ops that made them)
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    live = peak = 0
    for _, change in events:
        live += change
        peak = max(peak, live)
    return {"static": static, "peak": static + peak}
