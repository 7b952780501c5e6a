"""Quantization is orthogonal to the method: ``quant=nf4`` loads the frozen base with bitsandbytes NF4, double
quantization and bfloat16 compute (``spiel.io.base_model``); qSpIEL = ``method=ag quant=nf4``, QLoRA =
``method=lora quant=nf4``. The non-quantized layers are kept in bfloat16 too
(``spiel.training.config.hydra_config.validate``), matching the 4-bit layers' compute dtype, and the trainable
deltas/adapters default to bfloat16 (the paper's setting for quantized training).
"""

from __future__ import annotations


def prepare_quantized_for_peft(model):
    """peft's k-bit preparation (norms and embeddings in fp32 for stability, as QLoRA/open-instruct).

    Activation checkpointing is enabled separately by the trainer for every method, so not here."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
