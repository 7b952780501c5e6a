"""LoRA and (IA)3 through peft, on the same seven projections; QLoRA is lora on an NF4 base."""

from __future__ import annotations

import torch

from spiel.training.methods.base import Method, target_modules_error
from spiel.training.methods.quant import prepare_quantized_for_peft


class PeftMethod(Method):
    upcasts_rest_on_nf4 = True

    def check_on_meta(self, meta_model, mcfg):
        from spiel.model.targets import find_targets

        try:  # peft's rule for a list: a module whose name is, or ends with ".", an entry
            find_targets(meta_model, list(mcfg.target_modules))
        except ValueError as e:
            raise target_modules_error(e) from None


class LoraMethod(PeftMethod):
    name = "lora"
    budget_key = "r"
    planned = True
    final_format = "peft LoRA adapter (adapter_config.json + adapter_model.safetensors)"

    def plan_trained(self, shape, plan, value_bytes, base_bytes, shards):
        n = plan.lora_r * sum(o + i for o, i in shape.targets(plan.target_modules).values())
        return n, {
            "adapters": n * value_bytes,
            "optimizer state": n * 8,  # AdamW m, v in fp32 (torch keeps the parameter dtype: fp32)
            "gradients": n * value_bytes * (2 if plan.parallel == "ddp" else 1),
        }

    def plan_linear_inputs(self, shape, plan, s):
        # each adapted layer keeps its dropped-out input, the dropout mask and A's output (the inputs of
        # q, k, v, gate and up have h features, o_proj's q, down_proj's m)
        h, q, m = shape.hidden, shape.heads * shape.head_dim, shape.intermediate
        return sum(i * (s + 1) + plan.lora_r * s for i in (h, h, h, q, h, h, m))

    def plan_fields(self, mcfg):
        return dict(lora_r=mcfg.r, target_modules=list(mcfg.target_modules), delta_dtype=mcfg.adapter_dtype)

    def describe_budget(self, plan):
        return f"r={plan.lora_r}"

    def wrap(self, model, mcfg, *, seed, quantized):
        from peft import LoraConfig, get_peft_model

        if quantized:
            model = prepare_quantized_for_peft(model)
        config = LoraConfig(
            r=mcfg.r,
            lora_alpha=mcfg.alpha,
            lora_dropout=mcfg.dropout,
            target_modules=list(mcfg.target_modules),
            task_type="CAUSAL_LM",
        )
        peft_model = get_peft_model(model, config)
        adapter_dtype = self.trainable_dtype(mcfg.adapter_dtype, "nf4" if quantized else "none", "float32")
        for name, param in peft_model.named_parameters():
            if param.requires_grad and "lora_" in name:
                param.data = param.data.to(getattr(torch, adapter_dtype))
        return peft_model


class IA3Method(PeftMethod):
    name = "ia3"
    final_format = "peft (IA)3 adapter (adapter_config.json + adapter_model.safetensors)"

    def wrap(self, model, mcfg, *, seed, quantized):
        from peft import IA3Config, get_peft_model

        if quantized:
            model = prepare_quantized_for_peft(model)
        config = IA3Config(
            target_modules=list(mcfg.target_modules),
            feedforward_modules=list(mcfg.feedforward_modules),
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, config)
