"""What every training method provides: how the base model is wrapped, which optimizer is built,
and how the result is saved."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn


def target_modules_error(error: ValueError):
    """find_targets' message ("target_modules [...] match no ...") keyed as the config key."""
    from spiel.training.config.schema import ConfigError

    message = str(error)
    if message.startswith("target_modules"):
        message = message.removeprefix("target_modules").lstrip("= ")
    return ConfigError(f"method.target_modules: {message}")


class Method:
    """One entry of the registry: what callers ask of a method (its traits) and what it does. Subclasses
    override what differs."""

    name: str = ""
    is_sparse: bool = False  # SpIEL: sparse deltas that a selector reselects (a SpielModel)
    supports_quant: bool = True  # trains on top of frozen NF4 weights (quant=nf4)
    upcasts_rest_on_nf4: bool = False  # peft's k-bit preparation keeps the non-quantized weights in fp32
    budget_key: str | None = None  # the method config's key for the rank-like budget (None: all weights)
    planned: bool = False  # spiel-plan estimates its memory (the plan_* components below)
    final_format: str = ""  # what the final checkpoint is, for messages

    def trainable_dtype(self, configured: str | None, quant: str, base_dtype: str) -> str:
        """The dtype of the trained values: the configured one, else float32 (bfloat16 on an NF4 base)."""
        return configured or ("bfloat16" if quant == "nf4" else "float32")

    # -- planner components (spiel.planning.memory): bytes from shapes, no model built ----------------------
    def plan_trained(self, shape, plan, value_bytes: int, base_bytes: int, shards: int) -> tuple[int, dict]:
        """(trainable count, {part: bytes per GPU}) of what this method trains and keeps for it."""
        raise NotImplementedError(f"spiel-plan does not estimate method {self.name!r}")

    def plan_linear_inputs(self, shape, plan, s: int) -> float:
        """Bytes per token and layer that the trainable linear layers keep for backward (``s``: bytes per
        compute value): their inputs, shared by q/k/v and by gate/up; o_proj's and down_proj's."""
        return (2 * shape.hidden + shape.heads * shape.head_dim + shape.intermediate) * s

    def plan_fields(self, mcfg) -> dict:
        """The RunPlan fields this method's config sets (its budget, targets and trained dtype)."""
        return {}

    def describe_budget(self, plan) -> str:
        return "all weights"

    def wrap(self, model: nn.Module, mcfg, *, seed: int, quantized: bool) -> nn.Module:
        """The trainable model built on the frozen (possibly 4-bit) base."""
        raise NotImplementedError

    def check_on_meta(self, meta_model: nn.Module, mcfg) -> None:
        """Check what depends on the model's module names and shapes (target_modules, budgets) on a
        weightless copy (device "meta"), before the weights load; raise ConfigError naming the key."""

    def make_optimizer(self, model: nn.Module, mcfg, lr: float, weight_decay: float):
        """Our optimizer, or None to let the Trainer build ``trainer_optim(mcfg)`` over the trainable
        parameters."""
        return None

    def trainer_optim(self, mcfg) -> str:
        return "adamw_torch"

    def save(self, model: nn.Module, directory: Path, tokenizer=None) -> None:
        """The final checkpoint in this method's format (docs/checkpoint-format.md)."""
        model.save_pretrained(directory)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)

    def num_trainable(self, model: nn.Module) -> int:
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    def after_training(self, model: nn.Module, run_dir: Path, total_steps: int, plot: bool) -> dict:
        """Extra outputs at the end of training (rank 0); returns entries for the run summary."""
        return {}
