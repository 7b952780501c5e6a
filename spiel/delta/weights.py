"""Dense views of frozen base weights: plain tensors, or bitsandbytes NF4/FP4 ``Params4bit``.

bitsandbytes is imported only when a quantized weight is actually met, so ``spiel.delta`` works on
machines without it.
"""

from __future__ import annotations

import torch


def is_quantized(weight: torch.Tensor) -> bool:
    """True for a bitsandbytes 4-bit weight (packed uint8 data plus a ``quant_state``)."""
    return getattr(weight, "quant_state", None) is not None


def weight_shape(weight: torch.Tensor) -> tuple[int, int]:
    """The logical ``(out, in)`` shape, also for packed 4-bit weights."""
    if is_quantized(weight):
        shape = weight.quant_state.shape
        return int(shape[0]), int(shape[1])
    return int(weight.shape[0]), int(weight.shape[1])


def dense_weight(weight: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, bool]:
    """``(W in dtype, is_fresh)``: ``is_fresh`` says the tensor is a new buffer the caller may modify."""
    if is_quantized(weight):
        import bitsandbytes.functional as bnb_functional

        return bnb_functional.dequantize_4bit(weight.data, weight.quant_state).to(dtype), True
    if weight.dtype != dtype:
        return weight.to(dtype), True
    return weight, False


def weight_plus_delta(
    weight: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """A fresh ``W + scatter(indices, values)`` in ``dtype`` (the delta is rounded to ``dtype``)."""
    dense, fresh = dense_weight(weight, dtype)
    if not fresh:
        dense = dense.clone()
    dense.view(-1).index_add_(0, indices, values.to(dtype))
    return dense
