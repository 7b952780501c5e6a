"""The sparse-delta linear map as one autograd Function.

Forward: ``Y = X (W + scatter(indices, values))ᵀ + b``. ``W + Δ`` exists only inside forward and is
rebuilt inside backward, so no tensor of size out·in is kept between the two (only the frozen ``W``
itself, which already exists, is referenced). For a full-precision frozen ``W`` the delta is added in
place and the k overwritten entries restored exactly afterwards, so not even a transient copy is made;
with a ``MergedStorage`` (``merged.py``) the weight keeps ``W + Δ`` between calls instead, and forward and
input gradient are plain GEMMs on it (the same numbers, bit for bit).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from spiel.delta.grad_paths import gather_grad, validate_grad_path
from spiel.delta.merged import MergedStorage
from spiel.delta.weights import delta_applied, is_quantized, weight_shape


@dataclass
class GradProbe:
    """What growth selection wants from one backward.

    ``on_dense_grad(g)``: receives the dense ``dL/dW`` of this backward (``[out, in]``, compute dtype).
    ``candidates`` / ``on_candidate_grad(g)``: sorted unique flat indices, and a callback receiving
    ``dL/dW`` at them (fp32), computed by the same gather-gradient path (no dense gradient).
    """

    on_dense_grad: Callable[[torch.Tensor], None] | None = None
    candidates: torch.Tensor | None = None
    on_candidate_grad: Callable[[torch.Tensor], None] | None = None


class SparseDeltaLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, indices, values, bias, grad_path, probe, compute_dtype, storage):
        out_features, in_features = weight_shape(weight)
        dtype = compute_dtype or (x.dtype if is_quantized(weight) else weight.dtype)
        with _weight_plus_delta(weight, indices, values, dtype, storage) as merged:
            y = F.linear(x.to(dtype), merged, None if bias is None else bias.to(dtype))
        # The frozen weight is saved by reference (quantized weights keep their quant_state that way).
        ctx.weight, ctx.storage = weight, storage
        ctx.save_for_backward(x, indices, values, bias)
        ctx.meta = (grad_path, probe, dtype, out_features, in_features, x.dtype)
        # The output takes the input's dtype, as bitsandbytes' Linear4bit does (an fp32 model with a
        # bf16-compute 4-bit base keeps fp32 activations).
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_y):
        x, indices, values, bias = ctx.saved_tensors
        weight = ctx.weight
        grad_path, probe, dtype, out_features, in_features, x_dtype = ctx.meta
        need_x, need_w, _, need_values, need_bias = ctx.needs_input_grad[:5]

        g2d = grad_y.reshape(-1, out_features).to(dtype)
        x2d = x.reshape(-1, in_features).to(dtype)
        grad_x = grad_w = grad_values = grad_bias = None

        if need_x:
            with _weight_plus_delta(weight, indices, values, dtype, ctx.storage) as merged:
                grad_x = torch.mm(g2d, merged).view(*x.shape[:-1], in_features).to(x_dtype)

        dense = None
        if need_w or (probe is not None and probe.on_dense_grad is not None) or (
            need_values and grad_path == "dense"
        ):
            dense = torch.mm(g2d.t(), x2d)
            if probe is not None and probe.on_dense_grad is not None:
                with _labelled("spiel::probe"):
                    probe.on_dense_grad(dense)
            if need_w:
                grad_w = dense.to(weight.dtype)
        if need_values:
            with _labelled("spiel::values_grad"):
                grad_values = gather_grad(
                    x2d, g2d, indices, out_features, in_features, grad_path, dense_grad=dense
                ).to(values.dtype)
        if probe is not None and probe.candidates is not None and probe.on_candidate_grad is not None:
            with _labelled("spiel::probe"):
                probe.on_candidate_grad(
                    gather_grad(x2d, g2d, probe.candidates, out_features, in_features, grad_path, dense_grad=dense)
                    .to(torch.float32)
                )
        del dense
        if need_bias:
            grad_bias = g2d.sum(0).to(bias.dtype)
        return grad_x, grad_w, None, grad_values, grad_bias, None, None, None, None


def _labelled(name: str):
    """A profiler region (``spiel.bench.profile`` sorts time by them); nothing when no profiler runs."""
    return torch.profiler.record_function(name) if torch._C._autograd._profiler_enabled() else nullcontext()


@contextmanager
def _weight_plus_delta(weight, indices, values, dtype, storage: MergedStorage | None):
    """``W + Δ`` for one GEMM: kept merged in ``storage`` when given (``weight`` must then be a frozen,
    contiguous tensor in ``dtype``), else applied for the block and restored."""
    if storage is not None:
        yield storage.apply(weight, indices, values)
        return
    with delta_applied(weight, indices, values, dtype) as merged:
        yield merged


def sparse_delta_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    indices: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor | None = None,
    grad_path: str = "auto",
    probe: GradProbe | None = None,
    compute_dtype: torch.dtype | None = None,
    storage: MergedStorage | None = None,
) -> torch.Tensor:
    """``x (W + scatter(indices, values))ᵀ + bias`` for ``x`` of shape ``[..., in]``.

    ``weight``: ``[out, in]`` (or a bitsandbytes 4-bit ``Params4bit``, dequantized on the fly);
    ``indices``: sorted unique flat row-major positions (int32/int64); ``values``: ``[k]``.
    ``grad_path``: how ``dL/dvalues`` is computed: ``auto | dense | sddmm | triton``.
    ``compute_dtype``: matmul dtype; default the weight's (the input's for 4-bit weights).
    ``storage``: keep ``W + Δ`` in ``weight`` between calls (``MergedStorage``; a frozen, contiguous weight
    in the compute dtype only), instead of applying and restoring the delta in every call.
    """
    validate_grad_path(grad_path)
    if values.shape != indices.shape:
        raise ValueError(f"values {tuple(values.shape)} and indices {tuple(indices.shape)} differ in shape")
    if storage is not None and not merged_storage_fits(weight, compute_dtype):
        raise ValueError("merged storage needs a frozen, contiguous, full-precision weight in the compute dtype")
    return SparseDeltaLinearFunction.apply(
        x, weight, indices, values, bias, grad_path, probe, compute_dtype, storage)


def merged_storage_fits(weight: torch.Tensor, compute_dtype: torch.dtype | None) -> bool:
    """Whether ``weight`` can hold ``W + Δ`` itself: not quantized (requantizing would be lossy), already in
    the compute dtype (else every GEMM converts a copy anyway), frozen and contiguous."""
    return (not is_quantized(weight) and compute_dtype in (None, weight.dtype) and not weight.requires_grad
            and weight.is_contiguous())


__all__ = ["GradProbe", "SparseDeltaLinearFunction", "merged_storage_fits", "sparse_delta_linear"]
