"""The sparse-delta layer: storage, the autograd function and its gather-gradient paths.

Needs only torch (and triton for the CUDA kernel); bitsandbytes only for 4-bit base weights.
"""

from .function import GradProbe, SparseDeltaLinearFunction, sparse_delta_linear
from .grad_paths import GRAD_PATHS, choose_grad_path, gather_grad
from .indices import check_indices, csr_pattern, index_dtype, random_subset, rows_cols
from .layer import SparseDeltaLinear
from .weights import dense_weight, is_quantized, weight_shape

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
