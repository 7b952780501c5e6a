"""``SparseDeltaLinear``: a frozen ``nn.Linear`` (or bitsandbytes ``Linear4bit``) plus a sparse delta.

State: ``indices`` (buffer, sorted unique flat positions into ``W``), ``values`` (the trainable
``nn.Parameter``), ``grown_at`` (int32 buffer: optimizer step at which each slot's index was grown, for the
parameter-age plot). The base layer is kept as ``base_layer``. With merged storage (the default for a
frozen full-precision base already in the compute dtype) its weight holds ``W + Δ`` from one forward to the
next (see ``merged.py``); everything in spiel that reads the base calls :meth:`restore_base` first, and so
do ``state_dict``, ``load_state_dict`` and ``.to()``/``.cuda()``/``.half()``. Otherwise the base is modified
only by :meth:`merge` / :meth:`unmerge`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
import torch.nn as nn

from spiel.delta.function import GradProbe, merged_storage_fits, sparse_delta_linear
from spiel.delta.grad_paths import validate_grad_path
from spiel.delta.indices import check_indices, index_dtype, random_subset
from spiel.delta.merged import MergedStorage
from spiel.delta.weights import is_quantized, weight_shape


def _restore_base_hook(module: SparseDeltaLinear, *args) -> None:
    # a module-level function, so that a pickled module (torch.save of the whole model) keeps its hooks
    module.restore_base()


class SparseDeltaLinear(nn.Module):
    """``y = x (W + scatter(indices, values))ᵀ + b`` with ``k`` trainable entries.

    ``delta_dtype``: dtype of ``values`` (fp32 by default; the paper uses bf16 for 4-bit bases). The
    delta is added to ``W`` in the compute dtype, so with a bf16 base very small deltas round away in
    the forward pass exactly as they would after merging.
    """

    def __init__(
        self,
        base_layer: nn.Module,
        k: int,
        *,
        delta_dtype: torch.dtype = torch.float32,
        grad_path: str = "auto",
        indices: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        merged_storage: bool = True,
    ):
        super().__init__()
        self.base_layer = base_layer
        self.out_features, self.in_features = weight_shape(base_layer.weight)
        numel = self.out_features * self.in_features
        if not 0 < k <= numel:
            raise ValueError(
                f"k must be in [1, {numel}] for a {self.out_features}x{self.in_features} weight, got {k}"
            )
        device = base_layer.weight.device
        if indices is None:
            indices = random_subset(numel, k, generator)
        else:
            check_indices(indices, numel)
            if indices.numel() != k:
                raise ValueError(f"got {indices.numel()} indices for k={k}")
        self.register_buffer("indices", indices.to(device=device, dtype=index_dtype(numel)))
        self.values = nn.Parameter(torch.zeros(k, dtype=delta_dtype, device=device))
        self.register_buffer("grown_at", torch.zeros(k, dtype=torch.int32, device=device))
        self.grad_path = validate_grad_path(grad_path)
        self.merged = False
        self.delta_disabled = False  # SpielModel.disable_delta(): forward is the base layer alone
        self.merged_storage = merged_storage
        self._storage = MergedStorage()
        # Whoever reads or replaces the base through the module system gets it pristine.
        self.register_state_dict_pre_hook(_restore_base_hook)
        self._register_load_state_dict_pre_hook(_restore_base_hook, with_module=True)
        self._dense_grad_request: Callable[[torch.Tensor], None] | None = None
        self._grad_blocks_request = None
        self._checked_candidates = None
        self._candidates: torch.Tensor | None = None
        self._candidate_callback: Callable[[torch.Tensor], None] | None = None

    # -- shape and views ---------------------------------------------------------------------------
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def dense_shape(self) -> tuple[int, int]:
        return self.out_features, self.in_features

    @property
    def k(self) -> int:
        return self.values.numel()

    @property
    def compute_dtype(self) -> torch.dtype | None:
        """The matmul dtype: a 4-bit layer's ``compute_dtype``, else the weight's dtype."""
        if is_quantized(self.weight):
            return getattr(self.base_layer, "compute_dtype", None)
        return self.weight.dtype

    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense delta ``scatter(indices, values)`` as ``[out, in]`` (for export and tests)."""
        dtype = dtype or self.values.dtype
        delta = torch.zeros(self.out_features * self.in_features, dtype=dtype, device=self.values.device)
        delta.index_add_(0, self.indices, self.values.detach().to(dtype))
        return delta.view(self.out_features, self.in_features)

    def extra_repr(self) -> str:
        density = self.k / (self.out_features * self.in_features)
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, k={self.k}, "
            f"density={density:.4g}, grad_path={self.grad_path}, merged={self.merged}, "
            f"merged_storage={self.merged_storage}"
        )

    # -- growth probes -------------------------------------------------------------------------------
    def request_dense_grad(self, callback: Callable[[torch.Tensor], None]) -> None:
        """Hand the dense ``dL/dW`` of the next backward (one micro-batch) to ``callback``, once."""
        self._dense_grad_request = callback

    def request_grad_blocks(
        self, callback: Callable[[Callable[[int, int], torch.Tensor], int], None]
    ) -> None:
        """Hand ``dL/dW`` of the next backward (one micro-batch) to ``callback`` by row blocks, once (see
        ``GradProbe.on_grad_blocks``): a large dense gradient is then never whole."""
        self._grad_blocks_request = callback

    def set_candidate_probe(self, candidates: torch.Tensor, callback: Callable[[torch.Tensor], None]) -> None:
        """On every backward until cleared, hand ``dL/dW`` at ``candidates`` (fp32) to ``callback``."""
        # Checked once per tensor and version: a rule sets the same candidates again before every step of a
        # phase, and the check costs passes over them and host round-trips.
        checked = self._checked_candidates
        if checked is None or checked[0]() is not candidates or checked[1] != candidates._version:
            check_indices(candidates, self.out_features * self.in_features, "candidates")
            self._checked_candidates = (weakref.ref(candidates), candidates._version)
        self._candidates = candidates.to(device=self.indices.device, dtype=self.indices.dtype)
        self._candidate_callback = callback

    def clear_probes(self) -> None:
        self._dense_grad_request = None
        self._grad_blocks_request = None
        self._candidates = None
        self._candidate_callback = None

    def _take_probe(self) -> GradProbe | None:
        # Only a forward that will get a backward consumes the one-shot request (this keeps it alive
        # through the no-grad first pass of reentrant activation checkpointing).
        if not (torch.is_grad_enabled() and self.values.requires_grad):
            return None
        if (
            self._dense_grad_request is None
            and self._grad_blocks_request is None
            and self._candidates is None
        ):
            return None
        probe = GradProbe(
            self._dense_grad_request, self._candidates, self._candidate_callback, self._grad_blocks_request
        )
        self._dense_grad_request = self._grad_blocks_request = None
        return probe

    # -- forward / merge -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        if self.delta_disabled:
            self.restore_base()
            return self.base_layer(x)
        storage = None
        if self.merged_storage and merged_storage_fits(self.weight, self.compute_dtype):
            storage = self._storage
        else:
            self.restore_base()  # merged storage switched off (or the weight changed kind) since
        return sparse_delta_linear(
            x,
            self.weight,
            self.indices,
            self.values,
            self.bias,
            self.grad_path,
            self._take_probe(),
            self.compute_dtype,
            storage,
        )

    @property
    def merged_storage_nbytes(self) -> int:
        """Bytes held by merged storage now: the base values saved at the k positions (0 when not merged)."""
        saved = self._storage.saved
        return 0 if saved is None else saved.numel() * saved.element_size()

    def restore_base(self) -> None:
        """Make the base weight pristine again (bit for bit) if merged storage holds ``W + Δ`` in it; the next
        forward merges again. Call before reading the base, or before editing ``indices`` in place."""
        self._storage.restore()

    def _apply(self, fn, recurse=True):
        # .to() / .cuda() / .half() copy or convert the base: give them the pristine one
        self.restore_base()
        return super()._apply(fn, recurse)

    @torch.no_grad()
    def merge(self) -> None:
        """Add the delta into ``W`` in place (forward then runs the plain base layer)."""
        self._check_mergeable()
        self.restore_base()
        if not self.merged:
            self.weight.view(-1).index_add_(0, self.indices, self.values.to(self.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the delta again (exact in fp32 up to rounding of ``W + Δ``)."""
        self._check_mergeable()
        if self.merged:
            self.weight.view(-1).index_add_(0, self.indices, self.values.to(self.weight.dtype), alpha=-1)
            self.merged = False

    def _check_mergeable(self) -> None:
        if is_quantized(self.weight):
            raise RuntimeError(
                "merging a delta into a 4-bit weight would requantize it (lossy); keep the delta unmerged"
            )
