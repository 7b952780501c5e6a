"""SpIEL-AG and SpIEL-MA: sparse deltas on the target linear layers, our optimizers and the selector."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from .base import Method


class SpielMethod(Method):
    final_format = "SpIEL delta (spiel_config.json + spiel_delta.safetensors)"

    def __init__(self, name: str):
        self.name = name

    def wrap(self, model, mcfg, *, seed, quantized):
        from spiel.model import get_spiel_model

        spiel_model = get_spiel_model(model, mcfg.spiel_config(seed=seed, quantized=quantized))
        if quantized:
            # transformers' Trainer refuses a 4-bit model "without trainable adapters" unless this flag
            # is set; the sparse deltas are exactly such adapters.
            spiel_model._hf_peft_config_loaded = True
        return spiel_model

    def make_optimizer(self, model, mcfg, lr, weight_decay):
        if self.name == "ag":
            return model.make_optimizer(lr, weight_decay=weight_decay, betas=tuple(mcfg.betas), eps=mcfg.eps)
        return model.make_optimizer(lr, weight_decay=weight_decay)

    def callbacks(self, model, optimizer, resume_from):
        from spiel.training.selector_callback import SelectorCallback

        return [SelectorCallback(model, optimizer, resume_from)]

    def save(self, model, directory, tokenizer=None):
        model.save_pretrained(directory, tokenizer=tokenizer)

    def load_weights(self, model, directory):
        from spiel.checkpoint import check_against_base
        from spiel.checkpoint_check import read_checkpoint

        # Resume: the checkpoint is checked like any other (spiel always writes fingerprints, so there is
        # no override), and against the base weights this run loaded.
        saved, tensors = read_checkpoint(directory, override=None)
        check_against_base(directory, saved, model.model)
        model.load_delta_tensors(tensors, str(directory))
        return True

    def num_trainable(self, model: nn.Module) -> int:
        return model.num_tunable()

    def after_training(self, model, run_dir: Path, total_steps, plot):
        from spiel.training.ages import write_age_report

        return write_age_report(model, run_dir, total_steps, plot=plot)
