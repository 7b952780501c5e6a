"""Full fine-tuning: every parameter, any transformers optimizer; saved as a transformers model."""

from __future__ import annotations

from spiel.training.methods.base import Method


class FullMethod(Method):
    name = "full"
    supports_quant = False
    final_format = "transformers model directory (config.json + model.safetensors)"

    def wrap(self, model, mcfg, *, seed, quantized):
        if quantized:
            raise ValueError("full fine-tuning cannot train 4-bit weights; use quant=none")
        model.requires_grad_(True)
        return model

    def trainer_optim(self, mcfg) -> str:
        return mcfg.optim
