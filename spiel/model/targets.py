"""Which linear layers SpIEL tunes, and how many entries each gets."""

from __future__ import annotations

import re

import torch.nn as nn

from spiel.delta.weights import is_quantized, weight_shape

ALL_LINEAR = "all-linear"  # peft's name for every linear layer but the output head


def _is_tunable_linear(module: nn.Module) -> bool:
    # nn.Linear subclasses include bitsandbytes Linear4bit (packed; handled) and Linear8bitLt (not).
    if not isinstance(module, nn.Linear):
        return False
    weight = module.weight
    return is_quantized(weight) or weight.is_floating_point()


def _output_head_names(model: nn.Module) -> set[str]:
    names = {n for n, _ in model.named_modules() if n == "lm_head" or n.endswith(".lm_head")}
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if head is not None:
        names |= {n for n, m in model.named_modules() if m is head}
    return names


def find_targets(model: nn.Module, target_modules: list[str] | str | None) -> dict[str, nn.Module]:
    """Linear layers to tune, by name (in module order). Default (None, or peft's spelling "all-linear"):
    all except the output head."""
    linears = {n: m for n, m in model.named_modules() if n and _is_tunable_linear(m)}
    if target_modules is None or target_modules == ALL_LINEAR:
        heads = _output_head_names(model)
        chosen = {n: m for n, m in linears.items() if n not in heads}
    elif isinstance(target_modules, str):
        pattern = re.compile(target_modules)
        chosen = {n: m for n, m in linears.items() if pattern.fullmatch(n)}
    else:

        def matches(name: str, key: str) -> bool:
            return name == key or name.endswith("." + key)

        missing = [key for key in target_modules if not any(matches(n, key) for n in linears)]
        if missing:
            suffixes = sorted({n.rsplit(".", 1)[-1] for n in linears})
            raise ValueError(
                f"target_modules {missing} match no linear layer; linear layers here are named "
                f"(by suffix): {suffixes}"
            )
        chosen = {n: m for n, m in linears.items() if any(matches(n, key) for key in target_modules)}
    if not chosen:
        raise ValueError(f"target_modules={target_modules!r} selects no linear layer of this model")
    return chosen


def model_numel(model: nn.Module) -> int:
    """All parameters, counting 4-bit packed weights at their logical size."""
    total = 0
    for p in model.parameters():
        if is_quantized(p):
            out_features, in_features = weight_shape(p)
            total += out_features * in_features
        else:
            total += p.numel()
    return total


def total_budget(config, model: nn.Module, shapes: dict[str, tuple[int, int]]) -> int:
    """Tunable entries in all: ``r·Σ(in+out)``, ``density·(all parameters)`` or ``num_tunable``."""
    if config.rank_equiv is not None:
        return config.rank_equiv * sum(o + i for o, i in shapes.values())
    if config.density is not None:
        return int(config.density * model_numel(model))
    return int(config.num_tunable)


def allocate(total: int, shapes: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Split ``total`` over tensors in proportion to their size (uniform density), floored, >= 1."""
    sizes = {n: o * i for n, (o, i) in shapes.items()}
    capacity = sum(sizes.values())
    if total > capacity:
        raise ValueError(
            f"the budget of {total:,} tunable entries exceeds the {capacity:,} entries of the "
            f"{len(sizes)} target weights; lower rank_equiv/density/num_tunable"
        )
    if total < len(sizes):
        raise ValueError(
            f"the budget of {total:,} entries is smaller than the number of target weights "
            f"({len(sizes)}); raise it"
        )
    return {n: max(1, total * size // capacity) for n, size in sizes.items()}
