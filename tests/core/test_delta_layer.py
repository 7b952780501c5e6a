"""The sparse-delta layer against a dense autograd reference, for every gather-gradient path."""

import pytest
import torch
import torch.nn as nn

from spiel.delta import SparseDeltaLinear, index_dtype, random_subset, sparse_delta_linear
from spiel.delta.grad_paths import sddmm_gather_grad
from tests.helpers.delta_reference import dense_reference

PATHS = ["dense", "blocked", "sddmm", "triton", "triton_rows", "triton_tiles", "auto"]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=3e-2, atol=3e-2)}


def make_case(out_features, in_features, k, lead_shape, dtype, bias, index_type=torch.int32, seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=g).to(dtype)
    indices = random_subset(out_features * in_features, k, g).to(index_type)
    values = (torch.randn(k, generator=g) * 0.5).requires_grad_(True)  # fp32 deltas, as in the paper
    b = torch.randn(out_features, generator=g).to(dtype).requires_grad_(True) if bias else None
    x = torch.randn(*lead_shape, in_features, generator=g).to(dtype).requires_grad_(True)
    grad_y = torch.randn(*lead_shape, out_features, generator=g)
    return x, weight, indices, values, b, grad_y


def assert_matches_reference(x, weight, indices, values, bias, grad_y, grad_path, tol):
    y = sparse_delta_linear(x, weight, indices, values, bias, grad_path=grad_path)
    y.backward(grad_y.to(y.dtype))
    y_ref, ref = dense_reference(x, weight, indices, values, bias)
    y_ref.backward(grad_y)
    assert y.shape == y_ref.shape and y.dtype == x.dtype
    torch.testing.assert_close(y.float(), y_ref, **tol)
    torch.testing.assert_close(x.grad.float(), ref["x"].grad, **tol)
    torch.testing.assert_close(values.grad, ref["values"].grad, **tol)
    if bias is not None:
        torch.testing.assert_close(bias.grad.float(), ref["bias"].grad, **tol)


@pytest.mark.parametrize("grad_path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("lead_shape", [(7,), (2, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_forward_and_gradients_match_dense_autograd(grad_path, dtype, lead_shape, bias):
    # 37x29 is not a multiple of any block size; 150 of 1073 entries are active.
    case = make_case(37, 29, 150, lead_shape, dtype, bias)
    assert_matches_reference(*case, grad_path=grad_path, tol=TOL[dtype])


@pytest.mark.parametrize("grad_path", PATHS)
@pytest.mark.parametrize("k", [1, 13 * 11], ids=["k=1", "k=all"])
def test_extreme_budgets(grad_path, k):
    case = make_case(13, 11, k, (6,), torch.float32, bias=True, seed=3)
    assert_matches_reference(*case, grad_path=grad_path, tol=TOL[torch.float32])


@pytest.mark.parametrize("grad_path", PATHS)
@pytest.mark.parametrize("index_type", [torch.int32, torch.int64], ids=["int32", "int64"])
def test_int32_and_int64_indices(grad_path, index_type):
    case = make_case(19, 23, 40, (9,), torch.float32, bias=False, index_type=index_type, seed=5)
    assert_matches_reference(*case, grad_path=grad_path, tol=TOL[torch.float32])


@pytest.mark.parametrize("grad_path", ["blocked", "sddmm", "triton", "triton_rows", "triton_tiles"])
def test_many_tokens_cross_chunk_boundaries(grad_path):
    # 300 tokens: several triton token blocks (64), the last one partial.
    case = make_case(24, 20, 90, (3, 100), torch.float32, bias=True, seed=7)
    assert_matches_reference(*case, grad_path=grad_path, tol=dict(rtol=1e-4, atol=1e-4))


@pytest.mark.parametrize("token_chunk", [1, 64, 128, 1024])
def test_sddmm_accumulates_over_token_chunks(token_chunk):
    g = torch.Generator().manual_seed(2)
    x, dy = torch.randn(300, 20, generator=g), torch.randn(300, 24, generator=g)
    indices = random_subset(24 * 20, 90, g).int()
    expected = (dy.t() @ x).view(-1)[indices.long()]
    got = sddmm_gather_grad(x, dy, indices, 24, 20, token_chunk=token_chunk)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


def test_sddmm_reuses_its_workspace_across_shapes_and_handles_no_tokens():
    # The transposed chunks live in one reused buffer: a larger layer, then a smaller one, then bf16
    # inputs and an empty batch must each still give the dense reference.
    g = torch.Generator().manual_seed(5)
    for out, inn, tokens, dtype in [
        (96, 80, 333, torch.float32),
        (24, 20, 50, torch.float32),
        (40, 36, 130, torch.bfloat16),
        (24, 20, 0, torch.float32),
    ]:
        x = torch.randn(tokens, inn, generator=g).to(dtype)
        dy = torch.randn(tokens, out, generator=g).to(dtype)
        indices = random_subset(out * inn, 50, g)
        expected = (dy.float().t() @ x.float()).view(-1)[indices]
        got = sddmm_gather_grad(x, dy, indices, out, inn, token_chunk=128)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


def test_index_dtype_threshold():
    assert index_dtype(2**31 - 1) == torch.int32
    assert index_dtype(2**31) == torch.int64
    # A layer whose weight has exactly 2**31 entries stores int64 indices (meta device: no memory).
    big = nn.Linear(32768, 65536, bias=False, device="meta")
    assert SparseDeltaLinear(big, 8).indices.dtype == torch.int64
    assert SparseDeltaLinear(nn.Linear(8, 4), 8).indices.dtype == torch.int32


def test_random_subset_is_sorted_unique_and_uniform():
    g = torch.Generator().manual_seed(0)
    for numel, k in [(10, 0), (10, 3), (10, 7), (10, 10), (100_000, 5_000)]:
        s = random_subset(numel, k, g)
        assert s.numel() == k and s.dtype == torch.int64
        assert bool((s[1:] > s[:-1]).all()) and (k == 0 or (0 <= int(s[0]) and int(s[-1]) < numel))
    # Each of 20 positions is picked with probability 5/20; 4000 draws -> counts near 1000.
    counts = torch.zeros(20)
    for _ in range(4000):
        counts[random_subset(20, 5, g)] += 1
    assert counts.min() > 880 and counts.max() < 1120


def test_layer_wraps_linear_and_keeps_invariants():
    torch.manual_seed(0)
    base = nn.Linear(29, 37)
    layer = SparseDeltaLinear(base, 100, generator=torch.Generator().manual_seed(1))
    idx = layer.indices
    assert idx.dtype == torch.int32 and idx.numel() == 100 and bool((idx[1:] > idx[:-1]).all())
    assert layer.values.dtype == torch.float32 and not layer.values.any()
    x = torch.randn(4, 29)
    torch.testing.assert_close(layer(x), base(x))  # a zero delta changes nothing
    with pytest.raises(ValueError, match="k must be"):
        SparseDeltaLinear(base, 29 * 37 + 1)
    with pytest.raises(ValueError, match="sorted and unique"):
        SparseDeltaLinear(base, 2, indices=torch.tensor([5, 5]))
    with pytest.raises(ValueError, match="grad_path"):
        SparseDeltaLinear(base, 2, grad_path="fast")


def test_k_and_given_indices_are_checked_at_their_limits():
    """k from 1 to out·in exactly (0 and one past refused); given indices must be k of them, not one more or
    one less, and inside the weight."""
    base = nn.Linear(3, 2)
    for k in (1, 6):
        assert SparseDeltaLinear(base, k).indices.numel() == k
    for k in (0, 7):
        with pytest.raises(ValueError, match=rf"k must be in \[1, 6\] for a 2x3 weight, got {k}"):
            SparseDeltaLinear(base, k)
    layer = SparseDeltaLinear(base, 3, indices=torch.tensor([0, 2, 5]))
    assert layer.indices.tolist() == [0, 2, 5] and layer.values.numel() == layer.grown_at.numel() == 3
    for indices in ([0, 2], [0, 2, 4, 5]):
        with pytest.raises(ValueError, match=rf"got {len(indices)} indices for k=3"):
            SparseDeltaLinear(base, 3, indices=torch.tensor(indices))
    with pytest.raises(ValueError, match="out of range"):
        SparseDeltaLinear(base, 3, indices=torch.tensor([0, 2, 6]))


def test_merge_then_plain_linear_equals_unmerged_layer():
    torch.manual_seed(0)
    base = nn.Linear(29, 37)
    original = base.weight.detach().clone()
    layer = SparseDeltaLinear(base, 200)
    with torch.no_grad():
        layer.values.normal_()
    x = torch.randn(5, 29)
    unmerged = layer(x)
    layer.merge()
    torch.testing.assert_close(torch.nn.functional.linear(x, base.weight, base.bias), unmerged)
    torch.testing.assert_close(layer(x), unmerged)
    torch.testing.assert_close(base.weight - original, layer.delta_weight())
    layer.unmerge()
    torch.testing.assert_close(base.weight, original)
    torch.testing.assert_close(layer(x), unmerged)


def test_the_repr_states_shape_k_and_density():
    layer = SparseDeltaLinear(nn.Linear(8, 4), 3, grad_path="dense")
    assert layer.extra_repr().startswith(
        "in_features=8, out_features=4, k=3, density=0.09375, grad_path=dense, merged=False"
    )
