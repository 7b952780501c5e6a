"""The gather-gradient paths beyond the layer tests: calibrated ``auto``, the Triton tile kernel on shapes
with several (and empty) tiles under the interpreter, and every Triton kernel compiled for sm_80/sm_90."""

import os
import subprocess
import sys

import pytest
import torch

from spiel.delta import grad_paths, random_subset
from spiel.delta.grad_paths import calibrated_choices, calibrated_path, calibration_key, gather_grad
from spiel.delta.triton_sddmm import (
    KERNEL_CONFIGS,
    tile_pointers,
    triton_gather_grad,
    triton_rows_grad,
    triton_tiles_grad,
)
from tests.helpers.paths import REPO


def problem(out_f, in_f, k, tokens, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, in_f, generator=g).to(dtype)
    dy = torch.randn(tokens, out_f, generator=g).to(dtype)
    indices = random_subset(out_f * in_f, k, g).int()
    expected = (dy.float().t() @ x.float()).view(-1)[indices.long()]
    return x, dy, indices, expected


@pytest.fixture
def fresh_calibration():
    grad_paths.clear_calibration()
    yield
    grad_paths.clear_calibration()


def test_auto_measures_once_per_bucket_and_keeps_the_fastest(monkeypatch, fresh_calibration):
    monkeypatch.setattr(grad_paths, "CPU_CALIBRATION_MIN_WORK", 0)
    calls = []
    real_run = grad_paths._run_path

    def run(path, *args):
        calls.append(path)
        if path != "blocked":  # make every other path visibly slower
            import time

            time.sleep(0.01)
        return real_run(path, *args)

    monkeypatch.setattr(grad_paths, "_run_path", run)
    x, dy, indices, expected = problem(40, 30, 100, 9)
    got = gather_grad(x, dy, indices, 40, 30, "auto")
    torch.testing.assert_close(got.float(), expected, rtol=1e-5, atol=1e-5)
    key = calibration_key(x, 100, 40, 30)
    assert calibrated_choices() == {key: "blocked"}
    measured = len(calls)
    assert measured == len(grad_paths.candidate_paths(x.device)) * (1 + grad_paths.CALIBRATION_REPEATS)
    # Same bucket (k and tokens round to the same powers of two): no new measurement.
    x2, dy2, idx2, expected2 = problem(40, 30, 110, 12, seed=1)
    torch.testing.assert_close(
        gather_grad(x2, dy2, idx2, 40, 30, "auto").float(), expected2, rtol=1e-5, atol=1e-5
    )
    assert calls[measured:] == ["blocked"]
    # Another token bucket is measured afresh.
    x3, dy3, idx3, _ = problem(40, 30, 100, 40, seed=2)
    gather_grad(x3, dy3, idx3, 40, 30, "auto")
    assert len(calibrated_choices()) == 2


@pytest.mark.parametrize("speedup, expected", [(1.02, "default"), (1.5, "other")])
def test_auto_keeps_the_uncalibrated_choice_unless_another_path_is_clearly_faster(
    monkeypatch, fresh_calibration, speedup, expected
):
    """A fake clock: each path advances it by a fixed cost, so the choice is deterministic."""
    monkeypatch.setattr(grad_paths, "CPU_CALIBRATION_MIN_WORK", 0)
    x, dy, indices, _ = problem(40, 30, 100, 9)
    default = grad_paths.choose_grad_path(x.device, 9, 100, 40, 30)
    other = next(p for p in grad_paths.candidate_paths(x.device) if p != default)
    cost = {p: 1.0 for p in grad_paths.candidate_paths(x.device)}
    cost[other] = 1.0 / speedup
    clock = [0.0]
    real_run = grad_paths._run_path

    def run(path, *args):
        clock[0] += cost[path]
        return real_run(path, *args)

    monkeypatch.setattr(grad_paths, "_run_path", run)
    monkeypatch.setattr(grad_paths.time, "perf_counter", lambda: clock[0])
    path, _ = calibrated_path(x, dy, indices, 40, 30)
    assert path == (default if expected == "default" else other)


def test_small_cpu_problems_use_the_time_model_without_measuring(monkeypatch, fresh_calibration):
    def fail(*args):
        raise AssertionError("measured a small problem")

    monkeypatch.setattr(grad_paths, "_run_path", fail)
    x, dy, indices, _ = problem(40, 30, 100, 9)
    assert calibrated_path(x, dy, indices, 40, 30) == (
        grad_paths.choose_grad_path(x.device, 9, 100, 40, 30),
        None,
    )
    assert calibrated_choices() == {}


def test_off_cuda_auto_keeps_to_the_paths_that_run_anywhere_and_the_time_model():
    """Only CUDA gets the Triton paths, the dense default until measured and a CUDA synchronize: another
    device (meta here, like mps or xpu a name that sorts after "cuda") is treated as the CPU is."""
    meta = torch.device("meta")
    assert grad_paths.candidate_paths(meta) == ("dense", "blocked", "sddmm")
    assert grad_paths.choose_grad_path(meta, 16, 1000, 1024, 1024) == "sddmm"  # 0.1%: sddmm's side
    grad_paths._sync(meta)  # no CUDA call (this build may have no CUDA at all)


def test_cuda_starts_dense_measures_its_own_paths_and_synchronizes(monkeypatch):
    """No GPU is needed to check the CUDA branches: a cuda device object takes them (device.type is a fresh
    string at each access, so only an equality test finds it)."""
    cuda = torch.device("cuda")
    assert grad_paths.choose_grad_path(cuda, 16, 1000, 1024, 1024) == "dense"  # sddmm's side on the CPU
    assert grad_paths.choose_grad_path(torch.device("cpu"), 16, 1000, 1024, 1024) == "sddmm"
    monkeypatch.setattr("spiel.delta.triton_sddmm.triton_available", lambda: False)
    assert grad_paths.candidate_paths(cuda) == ("dense", "blocked")
    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    grad_paths._sync(cuda)
    grad_paths._sync(torch.device("cpu"))
    assert synced == [cuda]


def test_workspaces_are_reused_while_large_enough_one_per_purpose():
    first = grad_paths._workspace(1000, torch.device("cpu"), purpose="test-a")
    assert first.numel() == 1000 and first.dtype == torch.float32
    assert grad_paths._workspace(1000, torch.device("cpu"), purpose="test-a").data_ptr() == first.data_ptr()
    assert grad_paths._workspace(10, torch.device("cpu"), purpose="test-a").data_ptr() == first.data_ptr()
    other = grad_paths._workspace(10, torch.device("cpu"), purpose="test-b")
    assert other.data_ptr() != first.data_ptr()
    grown = grad_paths._workspace(1001, torch.device("cpu"), purpose="test-a")
    assert grown.numel() == 1001 and grad_paths._workspace(1001, torch.device("cpu"), "test-a") is grown


@pytest.mark.parametrize("tokens, measured", [(255, False), (256, True)])
def test_cpu_measures_from_a_1024x1024_layer_at_256_tokens(monkeypatch, fresh_calibration, tokens, measured):
    """CPU_CALIBRATION_MIN_WORK is tokens·out·in = 2**28: one token under it the time model decides
    unmeasured, exactly at it ``auto`` measures (on a fake clock here, so the test costs no timing)."""
    runs = []

    def run(path, x2d, *args):
        runs.append(path)
        return torch.zeros(1)

    monkeypatch.setattr(grad_paths, "_run_path", run)
    x, dy = torch.zeros(tokens, 1024), torch.zeros(tokens, 1024)
    indices = torch.arange(0, 1024 * 1024, 1024, dtype=torch.int32)
    path, gradient = calibrated_path(x, dy, indices, 1024, 1024)
    assert bool(runs) == measured and (gradient is not None) == measured
    assert path in grad_paths.candidate_paths(x.device)


def test_other_devices_are_not_measured_on_small_problems(monkeypatch, fresh_calibration):
    """meta (like mps or xpu, a name that sorts after "cuda") follows the CPU rule: no measuring below
    the minimum work, only the time model."""
    monkeypatch.setattr(grad_paths, "_run_path", lambda *a: pytest.fail("measured a small problem"))
    meta = torch.device("meta")
    x, dy = torch.empty(9, 30, device=meta), torch.empty(9, 40, device=meta)
    indices = torch.empty(100, dtype=torch.int32, device=meta)
    assert calibrated_path(x, dy, indices, 40, 30) == (
        grad_paths.choose_grad_path(meta, 9, 100, 40, 30),
        None,
    )


def test_blocked_path_computes_blocks_of_at_most_2_22_entries(monkeypatch):
    """Without block_rows each GEMM of the blocked path is BLOCKED_ELEMENTS // in rows of dYᵀ X (4 rows of a
    2**20-wide weight): its extra memory stays O(block · in), and the blocks still give the dense result."""
    shapes = []
    real_mm = torch.mm

    def mm(a, b):
        shapes.append((a.shape[0], b.shape[1]))
        return real_mm(a, b)

    in_f, out_f = 1 << 20, 10
    x, dy, indices, expected = problem(out_f, in_f, 64, 2)
    monkeypatch.setattr(grad_paths.torch, "mm", mm)
    got = grad_paths.blocked_gather_grad(x, dy, indices, out_f, in_f)
    assert grad_paths.BLOCKED_ELEMENTS == 1 << 22
    assert shapes and all(rows * cols <= 1 << 22 for rows, cols in shapes)
    assert max(rows for rows, _ in shapes) == 4
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tokens, expected", [(15, "dense"), (16, "sddmm")])
def test_the_time_model_counts_tokens_from_the_sddmm_minimum(
    monkeypatch, fresh_calibration, tokens, expected
):
    """1024x1024 at 0.1% density (sddmm's side of the model, whose limit there is 5.8%): one token under
    CPU_SDDMM_MIN_TOKENS (16) a dense GEMM, exactly at it sddmm; the tokens are the rows of X, not its width."""
    monkeypatch.setattr(grad_paths, "_run_path", lambda *a: pytest.fail("measured a small problem"))
    assert grad_paths.CPU_SDDMM_MIN_TOKENS == 16
    assert grad_paths.cpu_sddmm_max_density(1024, 1024) == pytest.approx(0.08 * (1 - 140 * 2048 / 1024**2))
    x, dy, indices, _ = problem(1024, 1024, 1000, tokens)
    assert grad_paths.choose_grad_path(x.device, tokens, 1000, 1024, 1024) == expected
    assert calibrated_path(x, dy, indices, 1024, 1024) == (expected, None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_tile_kernel_matches_dense_across_tiles_and_empty_tiles(dtype):
    block_r, block_c = KERNEL_CONFIGS["tiles"]["BLOCK_R"], KERNEL_CONFIGS["tiles"]["BLOCK_C"]
    out_f, in_f = 2 * block_r + 17, block_c + 30  # partial tiles in both directions
    x, dy, indices, expected = problem(out_f, in_f, 700, 70, dtype)
    # Leave the top-left tile empty, and a whole row and column of a tile crowded.
    r, c = indices.long() // in_f, indices.long() % in_f
    indices = indices[~((r < block_r) & (c < block_c))]
    expected = expected[~((r < block_r) & (c < block_c))]
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(triton_tiles_grad(x, dy, indices, out_f, in_f), expected, **tol)
    torch.testing.assert_close(triton_gather_grad(x, dy, indices, in_f), expected, **tol)
    torch.testing.assert_close(triton_rows_grad(x, dy, indices, out_f, in_f), expected, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_row_kernel_takes_empty_rows_and_rows_longer_than_a_block(dtype):
    block_k = KERNEL_CONFIGS["rows"]["BLOCK_K"]
    out_f, in_f, tokens = 9, 3 * block_k + 5, 2 * KERNEL_CONFIGS["rows"]["BLOCK_T"] + 3  # partial token steps
    x, dy, _, _ = problem(out_f, in_f, 1, tokens, dtype)
    # Row 0 empty, row 1 full (3 blocks and a part), row 4 one entry, the last row's last column.
    rows_cols = [(1, c) for c in range(in_f)] + [(4, 7), (out_f - 1, in_f - 1)]
    indices = torch.tensor(sorted(r * in_f + c for r, c in rows_cols), dtype=torch.int32)
    expected = (dy.float().t() @ x.float()).view(-1)[indices.long()]
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(triton_rows_grad(x, dy, indices, out_f, in_f), expected, **tol)


def test_tile_pointers_bracket_each_rows_entries_per_column_tile():
    indices = torch.tensor([0, 3, 4, 9, 10, 17, 23], dtype=torch.int32)  # a 3x8 matrix, column tiles of 4
    ptr = tile_pointers(indices, 3, 8, 4)
    assert ptr.tolist() == [[0, 2, 3], [3, 5, 5], [5, 6, 7]]


@pytest.mark.slow
def test_every_triton_kernel_compiles_for_sm80_and_sm90_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "check_triton_cuda.py"), "--compile-only"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if " sm_" in line]
    assert len(lines) == len(KERNEL_CONFIGS) * 2 * 2, proc.stdout  # kernels x dtypes x (sm_80, sm_90)
    assert all("0 B local" in line for line in lines), proc.stdout


@pytest.mark.parametrize("grad_path", ["sddmm", "auto"])
def test_several_index_sets_share_the_sddmm_transposes(monkeypatch, fresh_calibration, grad_path):
    """Also when auto chooses sddmm (the time model's choice forced here: this problem is small)."""
    monkeypatch.setattr(grad_paths, "choose_grad_path", lambda *args: "sddmm")
    x, dy, values_at, expected = problem(40, 30, 100, 70)
    g = torch.Generator().manual_seed(9)
    candidates = random_subset(40 * 30, 150, g).int()
    alone = [grad_paths.sddmm_gather_grad(x, dy, s, 40, 30, token_chunk=16) for s in (values_at, candidates)]
    copies = []
    transpose = grad_paths._transpose_into
    monkeypatch.setattr(
        grad_paths, "_transpose_into", lambda dst, src: copies.append(1) or transpose(dst, src)
    )
    monkeypatch.setattr(grad_paths, "sddmm_token_chunk", lambda in_features: 16)
    grad_paths.forget_shared_x()  # the calls above kept this x's chunks
    both = grad_paths.gather_grads(x, dy, [values_at, candidates], 40, 30, grad_path)
    assert len(copies) == 2 * 5  # X and dY, once per chunk of 16 of 70 tokens, for both sets
    assert all(torch.equal(a, b) for a, b in zip(alone, both, strict=True))
    torch.testing.assert_close(both[0], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both[1], (dy.t() @ x).view(-1)[candidates.long()], rtol=1e-5, atol=1e-5)


def test_sddmm_token_chunks_hold_a_quarter_million_floats_within_128_and_1024():
    """2^18 / in_features tokens per chunk, clamped to [128, 1024] (hand-computed)."""
    for in_features, tokens in [
        (4096, 128),
        (2048, 128),
        (1024, 256),
        (512, 512),
        (256, 1024),
        (128, 1024),
        (1 << 14, 128),
    ]:
        assert grad_paths.sddmm_token_chunk(in_features) == tokens, in_features


def test_blocked_path_runs_one_gemm_per_block_that_holds_entries(monkeypatch):
    """Rows 0 and 5 of 8 hold the entries: with one row per block, two GEMMs (the six empty blocks cost
    none), and the gradient is the dense reference's."""
    x, dy, _, _ = problem(8, 6, 1, 4)
    indices = torch.tensor([0, 5, 30, 35], dtype=torch.int32)  # (0,0) (0,5) (5,0) (5,5)
    real, calls = torch.mm, []
    monkeypatch.setattr(torch, "mm", lambda a, b: calls.append(a.shape) or real(a, b))
    got = grad_paths.blocked_gather_grad(x, dy, indices, 8, 6, block_rows=1)
    monkeypatch.undo()
    assert len(calls) == 2
    torch.testing.assert_close(got, (dy.t() @ x).view(-1)[indices.long()])


def test_an_unknown_path_is_refused_not_run():
    x, dy, indices, _ = problem(8, 6, 5, 4)
    for path in ("fast", "tritonx", "auto "):
        with pytest.raises(ValueError, match=r"grad_path must be one of .*, got '"):
            gather_grad(x, dy, indices, 8, 6, path)


@pytest.mark.parametrize("tokens", [1, 127, 128, 129, 300])  # around the 128-token chunk of 2048 inputs
def test_sddmm_matches_the_dense_autograd_gradient_with_empty_and_full_rows(tokens):
    out_f, in_f = 6, 2048
    assert grad_paths.sddmm_token_chunk(in_f) == 128
    g = torch.Generator().manual_seed(11)
    x = torch.randn(tokens, in_f, generator=g)
    dy = torch.randn(tokens, out_f, generator=g)
    # row 0 empty, row 1 full, row 3 a single entry at its last column, row 5 a single entry at its first
    positions = [in_f + c for c in range(in_f)] + [2 * in_f + 5, 2 * in_f + 900, 4 * in_f - 1, 5 * in_f]
    indices = torch.tensor(positions, dtype=torch.int32)
    weight = torch.zeros(out_f, in_f, requires_grad=True)
    (x @ weight.t()).backward(dy)  # the dense reference: autograd's dL/dW
    expected = weight.grad.view(-1)[indices.long()]
    got = grad_paths.gather_grad(x, dy, indices, out_f, in_f, "sddmm")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


def test_projections_of_one_input_share_its_transposed_chunks_until_it_changes(monkeypatch):
    """q/k/v (and gate/up) read one input: the second backward on it transposes only its dY; a changed input (in
    place: a new autograd version) or another tensor is transposed afresh. Each result is the dense one."""
    g = torch.Generator().manual_seed(12)
    x = torch.randn(70, 30, generator=g)
    copies = []
    transpose = grad_paths._transpose_into
    monkeypatch.setattr(
        grad_paths, "_transpose_into", lambda dst, src: copies.append(src.shape[1]) or transpose(dst, src)
    )

    def check(x_used, out_f, seed):
        dy = torch.randn(70, out_f, generator=torch.Generator().manual_seed(seed))
        indices = random_subset(out_f * 30, 90, torch.Generator().manual_seed(seed)).int()
        got = grad_paths.sddmm_gather_grad(x_used.reshape(-1, 30), dy, indices, out_f, 30, token_chunk=32)
        torch.testing.assert_close(got, (dy.t() @ x_used).view(-1)[indices.long()], rtol=1e-5, atol=1e-5)
        made = sorted(copies)
        copies.clear()
        return made

    grad_paths.forget_shared_x()
    assert check(x, 40, 1) == [30] * 3 + [40] * 3  # X and dY, 3 chunks of 32 of 70 tokens
    assert check(x, 24, 2) == [24] * 3  # X's chunks kept
    x.mul_(2)  # changed in place
    assert check(x, 24, 3) == [24] * 3 + [30] * 3
    assert check(x.clone(), 24, 4) == [24] * 3 + [30] * 3  # the same values in another tensor
    monkeypatch.setattr(grad_paths, "SHARED_XT_FLOATS", 70 * 30 - 1)  # one float too many to keep
    assert check(x, 24, 5) == [24] * 3 + [30] * 3 == check(x, 24, 6)
