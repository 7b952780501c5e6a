"""Merged storage (spiel/delta/merged.py): W + Δ kept in the frozen weight between forwards.

Everything is compared with the same layer with merged storage off (the delta applied and restored in every
call: the reference for bit-for-bit equality) and with dense autograd references."""

import copy

import pytest
import torch
import torch.nn as nn
from transformers import LlamaConfig, LlamaForCausalLM

from spiel import SpielConfig, get_spiel_model
from spiel.checkpoint.fingerprint import weight_fingerprint
from spiel.delta import SparseDeltaLinear, sparse_delta_linear
from spiel.delta.merged import MergedStorage
from spiel.optim import SparseAdamW
from tests.helpers.delta_reference import dense_reference

DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])


def twin_layers(dtype, k=300, shape=(37, 29), seed=0):
    """(merged storage on, off) over equal copies of one frozen base, with equal random values."""
    torch.manual_seed(seed)
    base = nn.Linear(shape[1], shape[0]).to(dtype).requires_grad_(False)
    on = SparseDeltaLinear(copy.deepcopy(base), k, generator=torch.Generator().manual_seed(1))
    off = SparseDeltaLinear(
        copy.deepcopy(base), k, generator=torch.Generator().manual_seed(1), merged_storage=False
    )
    with torch.no_grad():
        values = torch.randn(k) * 0.05
        on.values.copy_(values)
        off.values.copy_(values)
    return on, off, base.weight.detach().clone()


def step_both(layers, optimizers, dtype, micro_batches=2, seed=0):
    """One optimizer step with gradient accumulation on each layer; returns per layer (outputs, input grads)."""
    out = []
    for layer, opt in zip(layers, optimizers, strict=True):
        g = torch.Generator().manual_seed(seed)
        ys, gxs = [], []
        for _ in range(micro_batches):
            x = torch.randn(3, 5, layer.in_features, generator=g).to(dtype).requires_grad_(True)
            y = layer(x)
            y.float().square().sum().backward()
            ys.append(y.detach())
            gxs.append(x.grad)
        opt.step()
        opt.zero_grad()
        out.append((ys, gxs))
    return out


@DTYPES
def test_forward_backward_and_updates_equal_the_applied_path_bit_for_bit(dtype):
    on, off, _ = twin_layers(dtype)
    opts = [SparseAdamW([layer.values], lr=1e-2) for layer in (on, off)]
    for step in range(4):
        (ys_on, gx_on), (ys_off, gx_off) = step_both((on, off), opts, dtype, seed=step)
        assert on._storage.active and not off._storage.active
        for a, b in zip(ys_on + gx_on, ys_off + gx_off, strict=True):
            assert torch.equal(a, b)
        assert torch.equal(on.values, off.values)
    on.restore_base()
    assert torch.equal(on.weight, off.weight)


@DTYPES
def test_outputs_and_gradients_match_a_dense_autograd_reference(dtype):
    on, _, base = twin_layers(dtype)
    on(torch.randn(2, on.in_features, dtype=dtype))  # now merged
    x = torch.randn(4, on.in_features, dtype=dtype, requires_grad=True)
    y = on(x)
    y.float().sum().backward()
    y_ref, leaves = dense_reference(x, base, on.indices, on.values, on.bias)
    y_ref.sum().backward()
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(y.float(), y_ref, **tol)
    torch.testing.assert_close(x.grad.float(), leaves["x"].grad, **tol)
    torch.testing.assert_close(on.values.grad.float(), leaves["values"].grad, **tol)


def test_the_k_entries_are_written_once_per_optimizer_step_not_per_micro_batch():
    on, _, _ = twin_layers(torch.float32)
    opt = SparseAdamW([on.values], lr=1e-2)
    versions = []
    for _ in range(2):
        for _ in range(3):
            on(torch.randn(4, on.in_features, requires_grad=True)).sum().backward()
            versions.append(on.weight._version)
        opt.step()
        opt.zero_grad()
    assert versions[0] == versions[1] == versions[2] < versions[3] == versions[4] == versions[5]


@DTYPES
def test_every_reader_of_the_base_gets_it_pristine(dtype):
    on, _, base = twin_layers(dtype)
    x = torch.randn(4, on.in_features, dtype=dtype)

    def merged_now():
        on(x)
        assert on._storage.active and not torch.equal(on.weight, base)

    merged_now()
    on.restore_base()
    assert torch.equal(on.weight, base) and not on._storage.active
    merged_now()
    assert torch.equal(on.state_dict()["base_layer.weight"], base)
    merged_now()
    twin = copy.deepcopy(on)  # a copy carries the merged state along, consistently
    assert torch.equal(twin(x), on(x))
    assert torch.equal(twin.double().weight, base.double())  # .to() and friends convert the pristine base
    twin = copy.deepcopy(on)
    twin.restore_base()
    assert torch.equal(twin.weight, base)
    merged_now()
    plain = nn.Linear(on.in_features, on.out_features).to(dtype).requires_grad_(False)
    plain.weight.copy_(base)
    assert weight_fingerprint(on) == weight_fingerprint(plain)
    merged_now()
    on.merge()  # merge adds the delta to the pristine base once, as without merged storage
    expected = base.clone().view(-1).index_add_(0, on.indices, on.values.detach().to(dtype)).view_as(base)
    assert torch.equal(on.weight, expected)
    on.unmerge()
    if dtype == torch.float32:
        torch.testing.assert_close(on.weight, base)


def test_loading_a_state_dict_while_merged_restores_first():
    on, off, base = twin_layers(torch.float32)
    other, _, _ = twin_layers(torch.float32, seed=0)
    with torch.no_grad():
        other.indices.copy_(torch.arange(0, 2 * other.k, 2, dtype=other.indices.dtype))
        other.values.normal_()
    on(torch.randn(2, on.in_features))
    on.load_state_dict({**other.state_dict(), "base_layer.weight": base})
    assert torch.equal(on.weight, base)
    x = torch.randn(3, on.in_features)
    y_ref, _ = dense_reference(x, base, other.indices, other.values, on.bias)
    torch.testing.assert_close(on(x), y_ref)


def test_new_indices_and_switched_tensors_restore_the_old_positions():
    on, off, base = twin_layers(torch.float32)
    x = torch.randn(3, on.in_features)
    on(x)
    new = torch.arange(5, 5 + 3 * on.k, 3, dtype=on.indices.dtype)
    on.indices = new.clone()  # a new tensor (as delta sets switch): noticed in forward
    off.indices = new.clone()
    assert torch.equal(on(x), off(x))
    on.restore_base()
    assert torch.equal(on.weight, base)
    on(x)
    on.restore_base()  # an in-place edit after restore_base (as the selector does) is fine
    with torch.no_grad():
        on.indices.copy_(new + 1)
        off.indices.copy_(new + 1)
    assert torch.equal(on(x), off(x))
    on.restore_base()
    assert torch.equal(on.weight, base)


def test_editing_the_indices_in_place_while_merged_is_refused():
    on, _, _ = twin_layers(torch.float32)
    on(torch.randn(2, on.in_features))
    with torch.no_grad():
        on.indices.copy_(torch.arange(on.k, dtype=on.indices.dtype))
    with pytest.raises(RuntimeError, match="positions to restore are lost; call restore_base"):
        on(torch.randn(2, on.in_features))
    with pytest.raises(RuntimeError, match="positions to restore are lost"):
        on.restore_base()


def test_writing_the_merged_base_is_refused_unless_its_k_entries_are_unchanged():
    on, off, base = twin_layers(torch.float32)
    x = torch.randn(3, on.in_features)
    on(x)
    with torch.no_grad():
        on.weight.copy_(on.weight.clone())  # e.g. a broadcast of the same weights: same entries, new version
    assert torch.equal(on(x), off(x))
    with torch.no_grad():
        on.weight.view(-1)[on.indices[:4].long()] += 1.0
    with pytest.raises(RuntimeError, match="was written while it held W"):
        on(x)


def test_new_storage_under_a_merged_base_is_refused():
    on, _, _ = twin_layers(torch.float32)
    on(torch.randn(2, on.in_features))
    on.base_layer.weight.data = on.base_layer.weight.data.clone()
    with pytest.raises(RuntimeError, match="given new storage"):
        on.restore_base()


def test_weights_that_cannot_hold_the_delta_keep_the_applied_path():
    layer = nn.Linear(6, 5)  # trainable weight
    with pytest.raises(ValueError, match="merged storage needs a frozen"):
        sparse_delta_linear(
            torch.randn(2, 6), layer.weight, torch.tensor([1, 3]), torch.ones(2), storage=MergedStorage()
        )
    frozen = nn.Linear(6, 5).requires_grad_(False)
    with pytest.raises(ValueError, match="merged storage needs a frozen"):  # another compute dtype
        sparse_delta_linear(
            torch.randn(2, 6),
            frozen.weight,
            torch.tensor([1, 3]),
            torch.ones(2),
            compute_dtype=torch.bfloat16,
            storage=MergedStorage(),
        )
    on = SparseDeltaLinear(nn.Linear(6, 5).requires_grad_(False), 4)
    on.base_layer.weight.requires_grad_(True)
    on(torch.randn(2, 6))
    assert not on._storage.active  # falls back to apply-and-restore
    on.base_layer.weight.requires_grad_(False)
    on(torch.randn(2, 6))
    assert on._storage.active
    on.merged_storage = False  # switched off while merged: the next forward restores
    on(torch.randn(2, 6))
    assert not on._storage.active


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_gives_the_applied_path_gradients(reentrant):
    from torch.utils.checkpoint import checkpoint

    on, off, _ = twin_layers(torch.float32)
    grads = []
    for layer in (on, off):
        x = torch.randn(4, layer.in_features, generator=torch.Generator().manual_seed(3), requires_grad=True)
        for _ in range(2):
            y = checkpoint(lambda t, m=layer: torch.tanh(m(t)), x, use_reentrant=reentrant)
            y.square().sum().backward()
        grads.append((x.grad, layer.values.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


def tiny_llama(tie=False):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("method", ["ag", "ma"])
def test_training_with_reselection_equals_merged_storage_off_bit_for_bit(method):
    runs = []
    for merged_storage in (True, False):
        model = get_spiel_model(
            tiny_llama(), SpielConfig(method=method, rank_equiv=2, reselection_steps=3, estimation_steps=2)
        )
        for layer in model.deltas.values():
            layer.merged_storage = merged_storage
        optimizer = model.make_optimizer(lr=1e-2)
        selector = model.make_selector(optimizer, total_steps=12)
        g = torch.Generator().manual_seed(0)
        losses = []
        model.train()
        for _ in range(9):  # three reselections
            for _ in range(2):
                ids = torch.randint(0, 64, (2, 8), generator=g)
                loss = model(input_ids=ids, labels=ids).loss
                (loss / 2).backward()
                losses.append(loss.detach())
            optimizer.step()
            optimizer.zero_grad()
            selector.step()
        state = {
            n: (layer.indices.clone(), layer.values.detach().clone()) for n, layer in model.deltas.items()
        }
        bases = {n: layer.base_layer for n, layer in model.deltas.items()}
        model.unload()
        runs.append((losses, state, {n: m.weight.detach().clone() for n, m in bases.items()}))
    (losses_on, state_on, base_on), (losses_off, state_off, base_off) = runs
    assert all(torch.equal(a, b) for a, b in zip(losses_on, losses_off, strict=True))
    for name in state_on:
        assert torch.equal(state_on[name][0], state_off[name][0]) and torch.equal(
            state_on[name][1], state_off[name][1]
        )
        assert torch.equal(base_on[name], base_off[name])  # unload gives the pristine base back
    pristine = tiny_llama().state_dict()
    assert all(torch.equal(base_on[n], pristine[f"{n}.weight"]) for n in base_on)


def test_a_head_tied_to_the_embeddings_keeps_the_applied_path():
    model = get_spiel_model(
        tiny_llama(tie=True), SpielConfig(rank_equiv=2, target_modules=["lm_head", "q_proj"])
    )
    head = model.deltas["lm_head"]
    assert not head.merged_storage and model.deltas["model.layers.0.self_attn.q_proj"].merged_storage
    embed = model.model.get_input_embeddings().weight
    pristine = embed.detach().clone()
    with torch.no_grad():
        head.values.normal_()
    ids = torch.tensor([[1, 2, 3, 4]])
    first = model(input_ids=ids).logits
    assert torch.equal(embed, pristine)  # the embeddings read the untouched shared weight
    assert torch.equal(model(input_ids=ids).logits, first)


def test_the_device_check_script_passes_on_cpu(capsys):
    # scripts/check_merged_storage.py is what gpu_check.sh runs on CUDA
    from tests.helpers.script_loader import load_script

    assert (
        load_script("check_merged_storage").main(["--device", "cpu", "--shape", "64x48", "--tokens", "8"])
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("OK") for line in lines)


def test_loading_delta_tensors_into_a_merged_model_restores_the_base_first():
    model = get_spiel_model(tiny_llama(), SpielConfig(rank_equiv=2))
    pristine = {n: layer.weight.detach().clone() for n, layer in model.deltas.items()}
    ids = torch.tensor([[1, 2, 3, 4]])
    model(input_ids=ids)  # merged now
    g = torch.Generator().manual_seed(5)
    tensors = {}
    for name, layer in model.deltas.items():
        numel = layer.out_features * layer.in_features
        idx = torch.randperm(numel, generator=g)[: layer.k].sort().values
        tensors[name] = {"indices": idx, "values": torch.randn(layer.k, generator=g) * 0.1}
    model.load_delta_tensors(tensors)
    for name, layer in model.deltas.items():
        assert torch.equal(layer.weight, pristine[name])
    fresh = get_spiel_model(tiny_llama(), SpielConfig(rank_equiv=2))
    for layer in fresh.deltas.values():
        layer.merged_storage = False
    fresh.load_delta_tensors(tensors)
    assert torch.equal(model(input_ids=ids).logits, fresh(input_ids=ids).logits)


def test_a_pickled_merged_layer_loads_consistent(tmp_path):
    on, off, base = twin_layers(torch.float32)
    x = torch.randn(3, on.in_features)
    on(x)
    torch.save(on, tmp_path / "layer.pt")
    loaded = torch.load(tmp_path / "layer.pt", weights_only=False)
    assert torch.equal(loaded(x), off(x))
    loaded.restore_base()
    assert torch.equal(loaded.weight, base)


def test_the_merged_storage_knob_reaches_every_layer_and_is_checked():
    from spiel.training.config.schema import ConfigError, SpielMethodConfig

    for on in (True, False):
        base = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
        model = get_spiel_model(base, SpielConfig(num_tunable=10, merged_storage=on))
        assert [layer.merged_storage for layer in model.deltas.values()] == [on, on]
    with pytest.raises(ValueError, match="merged_storage must be true or false"):
        SpielConfig(merged_storage="yes")
    with pytest.raises(ConfigError, match="method.merged_storage: must be true or false"):
        SpielMethodConfig(name="ag", lr=1e-3, merged_storage=1)
