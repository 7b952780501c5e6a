"""Full fine-tuning: every parameter, any transformers optimizer; saved as a transformers model."""

from __future__ import annotations

from spiel.training.methods.base import Method


class FullMethod(Method):
    name = "full"
    supports_quant = False
    planned = True
    final_format = "transformers model directory (config.json + model.safetensors)"

    def trainable_dtype(self, configured, quant, base_dtype):
        return base_dtype  # every weight trains in its own dtype

    def plan_trained(self, shape, plan, value_bytes, base_bytes, shards):
        # every weight trains; AdamW state in the parameter dtype
        return shape.total_params, {
            "optimizer state": shape.total_params * 2 * base_bytes / shards,
            "gradients": shape.total_params * base_bytes / shards * (2 if plan.parallel == "ddp" else 1),
        }

    def wrap(self, model, mcfg, *, seed, quantized):
        if quantized:
            raise ValueError("full fine-tuning cannot train 4-bit weights; use quant=none")
        model.requires_grad_(True)
        return model

    def trainer_optim(self, mcfg) -> str:
        return mcfg.optim
