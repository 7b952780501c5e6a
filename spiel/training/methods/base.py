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
    """One entry of the registry. Subclasses override what differs."""

    name: str = ""
    supports_quant: bool = True
    final_format: str = ""  # what the final checkpoint is, for messages

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
