"""SpIEL-AG and SpIEL-MA: sparse deltas on the target linear layers, our optimizers and the selector."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from spiel.training.methods.base import Method, target_modules_error


class SpielMethod(Method):
    final_format = "SpIEL delta (spiel_config.json + spiel_delta.safetensors)"

    def __init__(self, name: str):
        self.name = name

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
