"""The sparse-delta layer: storage, the autograd function and its gather-gradient paths.

Needs only torch (and triton for the CUDA kernel); bitsandbytes only for 4-bit base weights.
"""

from spiel.delta.function import GradProbe, SparseDeltaLinearFunction, sparse_delta_linear
from spiel.delta.grad_paths import GRAD_PATHS, choose_grad_path, gather_grad
from spiel.delta.indices import check_indices, csr_pattern, index_dtype, random_subset, rows_cols
from spiel.delta.layer import SparseDeltaLinear
from spiel.delta.weights import dense_weight, is_quantized, weight_shape

__all__ = [
    "GRAD_PATHS",
    "GradProbe",
    "SparseDeltaLinear",
    "SparseDeltaLinearFunction",
    "check_indices",
    "choose_grad_path",
    "csr_pattern",
    "dense_weight",
    "gather_grad",
    "index_dtype",
    "is_quantized",
    "random_subset",
    "rows_cols",
    "sparse_delta_linear",
    "weight_shape",
]
