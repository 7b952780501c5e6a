"""SpIEL-AG and SpIEL-MA: sparse deltas on the target linear layers, our optimizers and the selector."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch.nn as nn

from spiel.training.methods.base import Method, target_modules_error

INT32_LIMIT = 2**31  # a weight with more entries needs int64 indices


def spiel_budget(shape, plan) -> dict[str, int]:
    """Entries per target of a planned run (``shape``: a planning ModelShape), exactly as get_spiel_model
    allocates them."""
    from spiel.model.targets import allocate, total_budget
    from spiel.spiel_config import SpielConfig

    config = SpielConfig(
        method=plan.method,
        rank_equiv=plan.rank_equiv,
        density=plan.density,
        num_tunable=plan.num_tunable,
        target_modules=plan.target_modules,
    )
    targets = shape.targets(plan.target_modules)
    return allocate(total_budget(config, shape.meta_model, targets), targets)


class SpielMethod(Method):
    is_sparse = True
    budget_key = "rank_equiv"
    planned = True
    final_format = "SpIEL delta (spiel_config.json + spiel_delta.safetensors)"

    def __init__(self, name: str):
        self.name = name

    def plan_trained(self, shape, plan, value_bytes, base_bytes, shards):
        from spiel.selection.methods import growth_rule, method_spec

        sizes = spiel_budget(shape, plan)
        targets = shape.targets(plan.target_modules)
        k = sum(sizes.values())
        index_bytes = sum(sizes[n] * (4 if o * i < INT32_LIMIT else 8) for n, (o, i) in targets.items())
        parts = {"deltas": index_bytes + k * (value_bytes + 4)}  # indices, values, grown_at (int32)
        if method_spec(self.name).adam_options:
            parts["optimizer state"] = k * (4 + 4)  # Adam m, v (fp32); the ages derive from grown_at
        else:
            parts["optimizer state"] = sum(4 * (o + i) for o, i in targets.values())  # SM3 row/col
            # a reselection scores every same-shape matrix at once (spiel.selection.batched): fp32 SM3
            # products and their keep-mask over the largest group, in chunks of the device's size (on CUDA
            # the largest it may take; less when free memory is short)
            from spiel.selection.batched import GROUP_CHUNK_ELEMENTS_CPU, GROUP_CHUNK_ELEMENTS_CUDA

            groups = Counter(targets.values())
            largest = max(count * o * i for (o, i), count in groups.items())
            chunk = GROUP_CHUNK_ELEMENTS_CUDA if plan.device == "cuda" else GROUP_CHUNK_ELEMENTS_CPU
            parts["MA reselection scores"] = min(largest, chunk) * (4 + 1)
        if growth_rule(self.name, "paper").estimates_gradients:
            # the first micro-batch of an estimation phase forms each target's dense dL/dW in turn; the
            # phase then keeps k candidates (int64) and three fp32 statistics
            compute = 2 if plan.compute_dtype != "float32" else 4
            parts["AG growth probe"] = max(o * i for o, i in targets.values()) * compute + k * (8 + 4 * 3)
        parts["gradients"] = k * value_bytes * (2 if plan.parallel == "ddp" else 1)  # + DDP buckets
        return k, parts

    def plan_fields(self, mcfg):
        target = mcfg.target_modules
        return dict(
            rank_equiv=mcfg.rank_equiv,
            density=mcfg.density,
            num_tunable=mcfg.num_tunable,
            target_modules=target if target is None or isinstance(target, str) else list(target),
            delta_dtype=mcfg.delta_dtype,
        )

    def describe_budget(self, plan):
        return f"rank_equiv={plan.rank_equiv or (None if plan.density or plan.num_tunable else 64)}"

    def wrap(self, model, mcfg, *, seed, quantized):
        from spiel.model.spiel_model import get_spiel_model

        return get_spiel_model(model, mcfg.spiel_config(seed=seed, quantized=quantized))

    def check_on_meta(self, meta_model, mcfg):
        from spiel.delta.weights import weight_shape
        from spiel.model.targets import allocate, find_targets, total_budget
        from spiel.training.config.schema import ConfigError

        try:
            targets = find_targets(meta_model, mcfg.target_modules)
        except ValueError as e:
            raise target_modules_error(e) from None
        shapes = {name: weight_shape(module.weight) for name, module in targets.items()}
        try:
            allocate(total_budget(mcfg.spiel_config(), meta_model, shapes), shapes)
        except ValueError as e:
            raise ConfigError(f"method (rank_equiv / density / num_tunable): {e}") from None

    def make_optimizer(self, model, mcfg, lr, weight_decay):
        from spiel.selection import method_spec

        if method_spec(self.name).adam_options:
            return model.make_optimizer(lr, weight_decay=weight_decay, betas=tuple(mcfg.betas), eps=mcfg.eps)
        return model.make_optimizer(lr, weight_decay=weight_decay)

    def save(self, model, directory, tokenizer=None):
        model.save_pretrained(directory, tokenizer=tokenizer)

    def num_trainable(self, model: nn.Module) -> int:
        return model.num_tunable()

    def after_training(self, model, run_dir: Path, total_steps, plot):
        from spiel.training.methods.ages import write_age_report

        return write_age_report(model, run_dir, total_steps, plot=plot)
