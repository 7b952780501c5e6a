"""Dense views of frozen base weights: plain tensors, or bitsandbytes NF4/FP4 ``Params4bit``.

bitsandbytes is imported only when a quantized weight is actually met, so ``spiel.delta`` works on
machines without it.
"""

from __future__ import annotations

from contextlib import contextmanager

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


@contextmanager
def delta_applied(weight: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, dtype: torch.dtype):
    """``W + scatter(indices, values)`` in ``dtype`` for the duration of a ``with`` block.

    A frozen, contiguous ``W`` already in ``dtype`` is modified in place and restored bit for bit
    afterwards from the k entries saved before: O(k) memory instead of an out·in copy, and exactly the
    values the copy would hold. Quantized, converted, non-contiguous or trainable weights get a copy.
    """
    dense, fresh = dense_weight(weight, dtype)
    if fresh or dense.requires_grad or not dense.is_contiguous():
        if not fresh:
            dense = dense.clone(memory_format=torch.contiguous_format)
        dense.view(-1).index_add_(0, indices, values.to(dtype))
        yield dense
        return
    flat = dense.view(-1)
    saved = flat.index_select(0, indices)
    flat.index_add_(0, indices, values.to(dtype))
    try:
        yield dense
    finally:
        flat.index_put_((indices,), saved)
