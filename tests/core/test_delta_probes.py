"""Growth probes, 4-bit base weights and memory behaviour of the sparse-delta layer."""

import pytest
import torch
import torch.nn as nn

from spiel.delta import SparseDeltaLinear, random_subset, sparse_delta_linear
from spiel.delta.function import GradProbe
from tests.helpers.delta_reference import dense_reference

PATHS = ["dense", "blocked", "sddmm", "triton", "triton_tiles", "auto"]


def small_layer(out_features=37, in_features=29, k=120, seed=0, bias=True):
    torch.manual_seed(seed)
    layer = SparseDeltaLinear(nn.Linear(in_features, out_features, bias=bias), k)
    with torch.no_grad():
        layer.values.normal_()
    layer.base_layer.requires_grad_(False)
    return layer


@pytest.mark.parametrize("grad_path", PATHS)
def test_dense_and_candidate_probes_match_the_dense_weight_gradient(grad_path):
    layer = small_layer()
    layer.grad_path = grad_path
    numel = 37 * 29
    candidates = random_subset(numel, 300, torch.Generator().manual_seed(4)).int()
    seen = {}
    layer.request_dense_grad(lambda g: seen.setdefault("dense", g.clone()))
    layer.set_candidate_probe(candidates, lambda g: seen.setdefault("cand", []).append(g.clone()))
    x = torch.randn(3, 6, 29)
    grad_y = torch.randn(3, 6, 37)
    layer(x).backward(grad_y)

    y_ref, ref = dense_reference(x, layer.weight, layer.indices, layer.values, layer.bias)
    y_ref.backward(grad_y)
    dense_ref = ref["merged"].grad  # dL/dW of the merged weight
    torch.testing.assert_close(seen["dense"], dense_ref, rtol=1e-5, atol=1e-5)
    assert len(seen["cand"]) == 1 and seen["cand"][0].dtype == torch.float32
    torch.testing.assert_close(seen["cand"][0], dense_ref.view(-1)[candidates.long()], rtol=1e-5, atol=1e-5)

    # The dense request is one-shot; the candidate probe stays until cleared.
    seen.clear()
    layer(x).backward(grad_y)
    assert "dense" not in seen and len(seen["cand"]) == 1
    layer.clear_probes()
    seen.clear()
    layer(x).backward(grad_y)
    assert seen == {}


DENSE_BYTES = 37 * 29 * 4  # small_layer's fp32 dL/dW


@pytest.mark.parametrize(
    "grad_path, limit, streams",
    [
        ("blocked", DENSE_BYTES - 1, True),  # one byte under the dense gradient's size: streamed
        ("blocked", DENSE_BYTES, False),  # exactly its size: formed whole
        ("sddmm", 0, True),
        ("dense", 0, False),  # the values' dense path forms it anyway
    ],
)
def test_a_large_block_probe_streams_unless_the_dense_gradient_is_formed_anyway(
    monkeypatch, grad_path, limit, streams
):
    """A dense gradient over PROBE_STREAM_BYTES reaches the block probe as row blocks computed on request;
    at the limit, or when the values' gradient takes the dense path, it is formed and given as one block.
    Either way the blocks and the values' gradient are the dense reference's."""
    from spiel.delta import function

    monkeypatch.setattr(function, "PROBE_STREAM_BYTES", limit)
    monkeypatch.setattr(function, "PROBE_BLOCK_BYTES", 8 * 29 * 4)  # 8 fp32 rows of 29
    layer = small_layer()
    layer.grad_path = grad_path
    seen = {}

    def on_blocks(block_grad, rows):
        seen["rows"] = rows
        seen["grad"] = torch.cat([block_grad(r0, min(r0 + rows, 37)) for r0 in range(0, 37, rows)])

    layer.request_grad_blocks(on_blocks)
    x, grad_y = torch.randn(3, 6, 29), torch.randn(3, 6, 37)
    layer(x).backward(grad_y)
    y_ref, ref = dense_reference(x, layer.weight, layer.indices, layer.values, layer.bias)
    y_ref.backward(grad_y)
    dense_ref = ref["merged"].grad
    assert seen["rows"] == (8 if streams else 37)
    torch.testing.assert_close(seen["grad"], dense_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        layer.values.grad, dense_ref.view(-1)[layer.indices.long()], rtol=1e-5, atol=1e-5
    )


def test_probe_is_not_consumed_by_a_no_grad_forward():
    layer = small_layer()
    seen = []
    layer.request_dense_grad(seen.append)
    with torch.no_grad():
        layer(torch.randn(2, 29))
    layer(torch.randn(2, 29)).sum().backward()
    assert len(seen) == 1 and seen[0].shape == (37, 29)


def test_candidate_probe_rejects_unsorted_candidates():
    layer = small_layer()
    with pytest.raises(ValueError, match="candidates must be sorted"):
        layer.set_candidate_probe(torch.tensor([9, 3], dtype=torch.int32), print)


def quantized_linear(in_features, out_features, compute_dtype, seed=0):
    bnb = pytest.importorskip("bitsandbytes")  # a declared dependency; absent only on the GPU box
    torch.manual_seed(seed)
    dense = nn.Linear(in_features, out_features)
    q = bnb.nn.Linear4bit(
        in_features,
        out_features,
        bias=True,
        compute_dtype=compute_dtype,
        quant_type="nf4",
        compress_statistics=True,
    )
    q.weight = bnb.nn.Params4bit(
        dense.weight.data.clone(), requires_grad=False, quant_type="nf4", compress_statistics=True
    )
    q.bias = nn.Parameter(dense.bias.data.clone(), requires_grad=False)
    return q.to("cpu")


@pytest.mark.parametrize("grad_path", PATHS)
@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_nf4_base_matches_dequantized_dense_reference(grad_path, compute_dtype):
    import bitsandbytes.functional as bnb_functional

    q = quantized_linear(40, 48, compute_dtype)
    # fp32 compute with fp32 deltas; bf16 compute with bf16 deltas (the paper's qSpIEL setting).
    layer = SparseDeltaLinear(q, 150, grad_path=grad_path, delta_dtype=compute_dtype)
    with torch.no_grad():
        layer.values.normal_()
    assert layer.weight.dtype == torch.uint8  # still packed: nothing was dequantized in place
    x = torch.randn(2, 5, 40, dtype=compute_dtype, requires_grad=True)
    grad_y = torch.randn(2, 5, 48)
    y = layer(x)
    y.backward(grad_y.to(y.dtype))

    dequantized = bnb_functional.dequantize_4bit(q.weight.data, q.weight.quant_state).float()
    y_ref, ref = dense_reference(x, dequantized, layer.indices, layer.values, q.bias)
    y_ref.backward(grad_y)
    tol = dict(rtol=1e-5, atol=1e-5) if compute_dtype == torch.float32 else dict(rtol=4e-2, atol=8e-2)
    torch.testing.assert_close(y.float(), y_ref, **tol)
    torch.testing.assert_close(x.grad.float(), ref["x"].grad, **tol)
    torch.testing.assert_close(layer.values.grad.float(), ref["values"].grad, **tol)
    with pytest.raises(RuntimeError, match="4-bit"):
        layer.merge()


def test_nothing_of_size_out_by_in_is_saved_for_backward():
    out_features, in_features = 64, 48
    layer = small_layer(out_features, in_features, k=50)
    saved = []

    def pack(t):
        saved.append((t.numel(), t.data_ptr()))
        return t

    x = torch.randn(8, in_features, requires_grad=True)  # 8*48 < 64*48
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(x)
    y.sum().backward()
    assert saved, "the hook saw no saved tensors"
    assert all(numel < out_features * in_features for numel, _ in saved), saved


def largest_allocation(fn):
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        fn()
    return max((e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0), default=0)


@pytest.mark.parametrize("grad_path", ["sddmm", "triton", "triton_tiles"])
def test_values_gradient_needs_no_dense_sized_buffer(grad_path):
    # Inputs need no grad, so backward only computes the values' gradient: the sparse paths must
    # not allocate anything near out*in floats, while the dense path does (a check of the check).
    out_features, in_features, tokens = 512, 384, 16
    weight = torch.randn(out_features, in_features)
    indices = random_subset(out_features * in_features, 300).int()
    values = torch.zeros(300, requires_grad=True)
    x = torch.randn(tokens, in_features)
    dense_bytes = out_features * in_features * 4

    def run(path):
        y = sparse_delta_linear(x, weight, indices, values, grad_path=path)
        return lambda: y.backward(torch.ones_like(y))

    assert largest_allocation(run("dense")) >= dense_bytes
    assert largest_allocation(run(grad_path)) < dense_bytes // 4


def test_blocked_path_holds_one_row_block_and_matches_dense():
    from spiel.delta.grad_paths import blocked_gather_grad

    out_features, in_features, tokens = 512, 384, 16
    g = torch.Generator().manual_seed(0)
    x, dy = torch.randn(tokens, in_features, generator=g), torch.randn(tokens, out_features, generator=g)
    indices = random_subset(out_features * in_features, 300, g).int()
    indices = indices[indices // in_features >= 100]  # the first row blocks have no entries at all
    expected = (dy.t() @ x).view(-1)[indices.long()]
    got = blocked_gather_grad(
        x, dy, indices, out_features, in_features, block_rows=48
    )  # 11 blocks, last partial
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    largest = largest_allocation(
        lambda: blocked_gather_grad(x, dy, indices, out_features, in_features, block_rows=48)
    )
    assert largest < out_features * in_features * 4 // 8


def test_cuda_kernels_refuse_cpu_tensors_outside_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, w = torch.randn(2, 3, requires_grad=True), torch.randn(4, 3)
    for path in ("triton", "triton_tiles"):
        y = sparse_delta_linear(
            x, w, torch.tensor([1, 5], dtype=torch.int32), torch.zeros(2, requires_grad=True), grad_path=path
        )
        with pytest.raises(ValueError, match="needs a CUDA device"):
            y.sum().backward()


def test_functional_rejects_bad_arguments():
    w = torch.randn(4, 3)
    with pytest.raises(ValueError, match="grad_path"):
        sparse_delta_linear(torch.randn(2, 3), w, torch.tensor([1]), torch.zeros(1), grad_path="sparse")
    with pytest.raises(ValueError, match="differ in shape"):
        sparse_delta_linear(torch.randn(2, 3), w, torch.tensor([1, 2]), torch.zeros(1))


def test_probe_dataclass_defaults():
    probe = GradProbe()
    assert probe.on_dense_grad is None and probe.candidates is None and probe.on_candidate_grad is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_base_weight_is_restored_bit_for_bit(dtype):
    # Merged storage off: the delta is added to W in place for the matmuls and the k entries are restored
    # afterwards. (With it on, see test_merged_storage.py.)
    torch.manual_seed(0)
    layer = SparseDeltaLinear(nn.Linear(29, 37).to(dtype), 300, merged_storage=False)
    layer.base_layer.requires_grad_(False)
    original = layer.weight.detach().clone()
    with torch.no_grad():
        layer.values.normal_()
    for _ in range(3):
        layer(torch.randn(4, 29, dtype=dtype, requires_grad=True)).float().sum().backward()
    assert torch.equal(layer.weight, original)


def test_weight_is_restored_when_the_matmul_fails():
    from spiel.delta.weights import delta_applied

    weight = torch.randn(6, 5)
    original = weight.clone()
    with (
        pytest.raises(RuntimeError, match="boom"),
        delta_applied(weight, torch.tensor([0, 7]), torch.ones(2), torch.float32),
    ):
        assert not torch.equal(weight, original)
        raise RuntimeError("boom")
    assert torch.equal(weight, original)


def test_whole_layer_step_allocates_nothing_dense_sized_on_the_sparse_path():
    out_features, in_features = 512, 384
    layer = small_layer(out_features, in_features, k=300)
    layer.grad_path = "sddmm"
    x = torch.randn(16, in_features, requires_grad=True)

    def step():
        layer(x).sum().backward()

    assert largest_allocation(step) < out_features * in_features * 4 // 4


def test_nf4_layer_returns_the_input_dtype_like_bitsandbytes():
    q = quantized_linear(40, 48, torch.bfloat16)
    layer = SparseDeltaLinear(q, 30)
    x = torch.randn(3, 40)  # an fp32 model around a bf16-compute 4-bit base
    assert q(x).dtype == torch.float32 and layer(x).dtype == torch.float32


def test_candidates_are_checked_once_per_tensor_and_version(monkeypatch):
    from spiel.delta import layer as layer_module

    layer = SparseDeltaLinear(nn.Linear(8, 6, bias=False), 10)
    checks = []
    check = layer_module.check_indices
    monkeypatch.setattr(layer_module, "check_indices", lambda *a: checks.append(1) or check(*a))
    candidates = torch.tensor([1, 5, 9], dtype=torch.int32)
    for _ in range(3):  # as a rule sets them before every step of a phase
        layer.clear_probes()
        layer.set_candidate_probe(candidates, lambda g: None)
    assert len(checks) == 1 and layer._candidates.data_ptr() == candidates.data_ptr()  # held, not copied
    candidates[0] = 7  # changed in place: unsorted now, and checked again
    with pytest.raises(ValueError, match="sorted"):
        layer.set_candidate_probe(candidates, lambda g: None)


def test_ag_keeps_its_candidates_in_the_index_dtype_shared_with_the_probe():
    from spiel import SpielConfig, get_spiel_model

    torch.manual_seed(0)
    model = get_spiel_model(
        nn.Sequential(nn.Linear(16, 24)),
        SpielConfig(method="ag", num_tunable=40, reselection_steps=4, estimation_steps=2),
    )
    opt = model.make_optimizer(lr=1e-2)
    sel = model.make_selector(opt, total_steps=8)
    model(torch.randn(4, 16)).pow(2).mean().backward()
    opt.step()
    sel.step()
    ((name, layer),) = model.deltas.items()
    candidates = sel.rule.phases[name].candidates
    assert candidates.dtype == layer.indices.dtype == torch.int32
    assert layer._candidates.data_ptr() == candidates.data_ptr()


def test_block_probes_at_the_default_sizes_and_a_streamed_values_gradient_is_not_gathered_again(monkeypatch):
    """16 MiB: a small dense gradient is handed whole (one block of all rows); a streamed one (the limit
    lowered) comes in blocks of 16 MiB of rows, and the values' gradient is taken from those blocks, not
    gathered a second time."""
    from spiel.delta import function

    assert function.PROBE_STREAM_BYTES == function.PROBE_BLOCK_BYTES == 16 << 20
    for limit, rows in ((None, 37), (0, (16 << 20) // (29 * 4))):
        if limit is not None:
            monkeypatch.setattr(function, "PROBE_STREAM_BYTES", limit)
            monkeypatch.setattr(function, "gather_grad", lambda *a, **kw: pytest.fail("gathered again"))
        layer = small_layer()
        layer.grad_path = "sddmm"
        seen = {}
        layer.request_grad_blocks(
            lambda block_grad, r, seen=seen: seen.update(rows=r, grad=block_grad(0, 37))
        )
        x, grad_y = torch.randn(3, 29), torch.randn(3, 37)
        layer(x).backward(grad_y)
        dense = grad_y.t() @ x
        assert seen["rows"] == rows
        torch.testing.assert_close(seen["grad"], dense, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            layer.values.grad, dense.view(-1)[layer.indices.long()], rtol=1e-5, atol=1e-5
        )
