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

from spiel.delta.grad_paths import gather_grad, gather_grads, validate_grad_path
from spiel.delta.indices import csr_pattern
from spiel.delta.merged import MergedStorage
from spiel.delta.weights import delta_applied, is_quantized, weight_shape


@dataclass
class GradProbe:
    """What growth selection wants from one backward.

    ``on_dense_grad(g)``: receives the dense ``dL/dW`` of this backward (``[out, in]``, compute dtype).
    ``candidates`` / ``on_candidate_grad(g)``: sorted unique flat indices, and a callback receiving
    ``dL/dW`` at them (fp32), computed by the same gather-gradient path (no dense gradient).
    ``on_grad_blocks(block_grad, rows_per_block)``: receives ``dL/dW`` by row blocks, to be read once each, in
    order: ``block_grad(r0, r1)`` gives rows ``r0:r1``. When the dense gradient is large (``PROBE_STREAM_BYTES``)
    and not needed otherwise, each block is computed on request and the whole never exists; otherwise there is
    one block, the dense gradient.
    """

    on_dense_grad: Callable[[torch.Tensor], None] | None = None
    candidates: torch.Tensor | None = None
    on_candidate_grad: Callable[[torch.Tensor], None] | None = None
    on_grad_blocks: Callable[[Callable[[int, int], torch.Tensor], int], None] | None = None


# A block probe of a dense gradient larger than this streams row blocks of this size instead (a LLaMA-2-7B MLP
# weight's bf16 gradient is 86 MiB; the candidates' transients once were as much again).
PROBE_STREAM_BYTES = 16 << 20
PROBE_BLOCK_BYTES = 16 << 20


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
        top = probe is not None and probe.on_grad_blocks is not None
        stream = (
            top
            and not need_w
            and not (need_values and grad_path == "dense")
            and (out_features * in_features * torch.finfo(dtype).bits // 8 > PROBE_STREAM_BYTES)
        )
        if stream:
            with _labelled("spiel::probe"):
                grad_values = _streamed_probe(
                    x2d, g2d, indices if need_values else None, probe, out_features, in_features
                )
            if grad_values is not None:
                grad_values = grad_values.to(values.dtype)
            need_values, top = False, False
        if (
            need_w
            or (probe is not None and probe.on_dense_grad is not None)
            or top
            or (need_values and grad_path == "dense")
        ):
            dense = torch.mm(g2d.t(), x2d)
            if probe is not None and probe.on_dense_grad is not None:
                with _labelled("spiel::probe"):
                    probe.on_dense_grad(dense)
            if top:
                with _labelled("spiel::probe"):
                    probe.on_grad_blocks(lambda r0, r1, whole=dense: whole[r0:r1], out_features)
            if need_w:
                grad_w = dense.to(weight.dtype)
        gather = probe is not None and probe.candidates is not None and probe.on_candidate_grad is not None
        if need_values and gather:  # one pass for both (the sddmm path transposes each token chunk once)
            with _labelled("spiel::values_grad+probe"):
                grad_values, at_candidates = gather_grads(
                    x2d,
                    g2d,
                    [indices, probe.candidates],
                    out_features,
                    in_features,
                    grad_path,
                    dense_grad=dense,
                )
                grad_values = grad_values.to(values.dtype)
                probe.on_candidate_grad(at_candidates.to(torch.float32))
        elif need_values:
            with _labelled("spiel::values_grad"):
                grad_values = gather_grad(
                    x2d, g2d, indices, out_features, in_features, grad_path, dense_grad=dense
                ).to(values.dtype)
        elif gather:
            with _labelled("spiel::probe"):
                probe.on_candidate_grad(
                    gather_grad(
                        x2d, g2d, probe.candidates, out_features, in_features, grad_path, dense_grad=dense
                    ).to(torch.float32)
                )
        del dense
        if need_bias:
            grad_bias = g2d.sum(0).to(bias.dtype)
        return grad_x, grad_w, None, grad_values, grad_bias, None, None, None, None


def _labelled(name: str):
    """A profiler region (``spiel.bench.profile`` sorts time by them); nothing when no profiler runs."""
    return torch.profiler.record_function(name) if torch._C._autograd._profiler_enabled() else nullcontext()


def _streamed_probe(x2d, g2d, indices, probe: GradProbe, out_features: int, in_features: int):
    """``probe.on_grad_blocks`` fed with row blocks of ``dYᵀ X`` computed on request; when ``indices`` is given,
    each block is also gathered at its run of (sorted) indices: the values' gradient (fp32) is returned."""
    rows = max(1, PROBE_BLOCK_BYTES // (in_features * x2d.element_size()))
    grad_values = bounds = None
    if indices is not None:
        crow, _ = csr_pattern(indices, out_features, in_features)
        bounds = crow.tolist()  # one read-back: each block's run of indices
        grad_values = torch.empty(indices.numel(), dtype=torch.float32, device=x2d.device)

    def block_grad(r0, r1):
        block = torch.mm(g2d[:, r0:r1].t(), x2d)
        if bounds is not None and bounds[r1] > bounds[r0]:
            lo, hi = bounds[r0], bounds[r1]
            grad_values[lo:hi] = block.view(-1).index_select(0, indices[lo:hi] - r0 * in_features)
        return block

    probe.on_grad_blocks(block_grad, rows)
    return grad_values


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
        raise ValueError(
            "merged storage needs a frozen, contiguous, full-precision weight in the compute dtype"
        )
    return SparseDeltaLinearFunction.apply(
        x, weight, indices, values, bias, grad_path, probe, compute_dtype, storage
    )


def merged_storage_fits(weight: torch.Tensor, compute_dtype: torch.dtype | None) -> bool:
    """Whether ``weight`` can hold ``W + Δ`` itself: not quantized (requantizing would be lossy), already in
    the compute dtype (else every GEMM converts a copy anyway), frozen and contiguous."""
    return (
        not is_quantized(weight)
        and compute_dtype in (None, weight.dtype)
        and not weight.requires_grad
        and weight.is_contiguous()
    )


__all__ = ["GradProbe", "SparseDeltaLinearFunction", "merged_storage_fits", "sparse_delta_linear"]
