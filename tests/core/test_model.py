"""SpielModel: sizing, targets, save/load, merge, composition and the errors a user can hit."""

import json

import pytest
import torch
import torch.nn as nn
from transformers import LlamaConfig, LlamaForCausalLM

from spiel import SpielConfig, compose, get_spiel_model
from spiel.checkpoint.format import FORMAT_VERSION
from spiel.delta import SparseDeltaLinear
from spiel.model.spiel_model import (
    CheckpointMismatchError,
    InvalidCheckpointError,
    SpielModel,
    read_spiel_config,
)

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def tiny_llama(seed=0, hidden=32):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=hidden,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def with_random_deltas(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.deltas.values():
            layer.values.copy_(torch.randn(layer.k, generator=g) * 0.1)
    return model


IDS = torch.tensor([[1, 5, 9, 3, 7, 2]])


def test_default_targets_are_the_seven_projections_and_rank_equiv_sizes_the_budget():
    base = tiny_llama()
    model = get_spiel_model(base, SpielConfig(rank_equiv=4))
    names = sorted(model.deltas)
    assert len(names) == 14 and all(n.rsplit(".", 1)[-1] in PROJ for n in names)
    assert "lm_head" not in " ".join(names)
    layers = list(model.deltas.values())
    budget = 4 * sum(layer.in_features + layer.out_features for layer in layers)
    total_numel = sum(layer.in_features * layer.out_features for layer in layers)
    assert budget - len(layers) <= model.num_tunable() <= budget  # floored per tensor
    for layer in layers:  # spread in proportion to size: the same density everywhere
        assert abs(layer.k / (layer.in_features * layer.out_features) - budget / total_numel) < 1e-2
    assert model.spiel_config.num_deltas == {n: layer.k for n, layer in model.deltas.items()}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".values") for n in trainable)


def test_density_and_num_tunable_budgets():
    base = tiny_llama()
    total = sum(p.numel() for p in base.parameters())
    model = get_spiel_model(base, SpielConfig(density=0.01, target_modules=["q_proj", "v_proj"]))
    assert sorted({n.rsplit(".", 1)[-1] for n in model.deltas}) == ["q_proj", "v_proj"]
    assert int(0.01 * total) - 4 <= model.num_tunable() <= int(0.01 * total)
    model = get_spiel_model(tiny_llama(), SpielConfig(num_tunable=500, target_modules=r".*mlp\.down_proj"))
    assert len(model.deltas) == 2 and 498 <= model.num_tunable() <= 500


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(estimation_steps=20, reselection_steps=20), "estimation_steps"),
        (dict(density=-0.1), "density"),
        (dict(rank_equiv=8, density=0.01), "only one of"),
        (dict(method="rigl"), "method"),
        (dict(delta_dtype="int8"), "delta_dtype"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpielConfig(**kwargs)


def test_bad_targets_and_budgets_fail_clearly():
    with pytest.raises(ValueError, match=r"\['qkv'\] match no linear layer.*q_proj"):
        get_spiel_model(tiny_llama(), SpielConfig(target_modules=["qkv"]))
    with pytest.raises(ValueError, match="exceeds"):
        get_spiel_model(tiny_llama(), SpielConfig(num_tunable=10**7))


def test_save_then_load_gives_identical_outputs(tmp_path):
    model = with_random_deltas(get_spiel_model(tiny_llama(), SpielConfig(rank_equiv=2, seed=5)))
    with torch.no_grad():
        expected = model(IDS).logits
    model.save_pretrained(tmp_path / "ckpt")
    saved = read_spiel_config(tmp_path / "ckpt")
    assert saved["format_version"] == FORMAT_VERSION and set(saved["modules"]) == set(model.deltas)
    loaded = SpielModel.from_pretrained(tiny_llama(), tmp_path / "ckpt")
    for name, layer in loaded.deltas.items():
        assert torch.equal(layer.indices, model.deltas[name].indices)
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS).logits, expected, rtol=0, atol=0)


def test_a_checkpoint_with_int64_grown_at_still_loads(tmp_path):
    """Checkpoints written before grown_at became int32 hold it as int64 (and, older than the delta's
    recorded SHA-256, have none)."""
    import json

    from safetensors.torch import load_file, save_file

    model = with_random_deltas(get_spiel_model(tiny_llama(), SpielConfig(rank_equiv=2, seed=5)))
    model.save_pretrained(tmp_path / "ckpt", compact=False)
    path = tmp_path / "ckpt" / "spiel_delta.safetensors"
    tensors = load_file(path)
    assert all(v.dtype == torch.int32 for k, v in tensors.items() if k.endswith(".grown_at"))
    save_file(
        {
            k: torch.full_like(v, 7, dtype=torch.int64) if k.endswith(".grown_at") else v
            for k, v in tensors.items()
        },
        path,
    )
    config_path = tmp_path / "ckpt" / "spiel_config.json"
    config = json.loads(config_path.read_text())
    del config["delta_sha256"]
    config_path.write_text(json.dumps(config))
    with pytest.raises(InvalidCheckpointError, match="no delta_sha256"):  # unhashed: only when asked
        SpielModel.from_pretrained(tiny_llama(), tmp_path / "ckpt")
    loaded = SpielModel.from_pretrained(tiny_llama(), tmp_path / "ckpt", allow_unverified_delta=True)
    for layer in loaded.deltas.values():
        assert layer.grown_at.dtype == torch.int32 and bool((layer.grown_at == 7).all())


def test_loading_into_another_base_fails_and_leaves_it_untouched(tmp_path):
    model = with_random_deltas(get_spiel_model(tiny_llama(seed=0), SpielConfig(rank_equiv=2)))
    model.save_pretrained(tmp_path / "ckpt")
    other = tiny_llama(seed=1)  # same architecture, other weights
    with pytest.raises(CheckpointMismatchError, match="base weights differ"):
        SpielModel.from_pretrained(other, tmp_path / "ckpt")
    assert not any(isinstance(m, SparseDeltaLinear) for m in other.modules())
    with pytest.raises(CheckpointMismatchError, match="shape mismatch"):
        SpielModel.from_pretrained(tiny_llama(hidden=64), tmp_path / "ckpt")
    with pytest.raises(FileNotFoundError, match="no spiel_config.json"):
        SpielModel.from_pretrained(tiny_llama(), tmp_path)


def test_a_checkpoint_without_its_config_is_not_taken_for_complete(tmp_path):
    model = get_spiel_model(tiny_llama(), SpielConfig(rank_equiv=2))
    model.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "spiel_config.json").unlink()  # as if killed before the config was written
    with pytest.raises(FileNotFoundError, match="not a complete SpIEL checkpoint"):
        SpielModel.from_pretrained(tiny_llama(), tmp_path / "ckpt")


def test_merge_and_unload_equals_the_unmerged_model():
    model = with_random_deltas(get_spiel_model(tiny_llama(), SpielConfig(rank_equiv=2)))
    with torch.no_grad():
        expected = model(IDS).logits
        plain = model.merge_and_unload()
        assert not any(isinstance(m, SparseDeltaLinear) for m in plain.modules())
        torch.testing.assert_close(plain(IDS).logits, expected, rtol=1e-5, atol=1e-5)


def test_compose_equals_adding_both_deltas(tmp_path):
    a = with_random_deltas(get_spiel_model(tiny_llama(), SpielConfig(rank_equiv=2, seed=1)), seed=1)
    b = with_random_deltas(get_spiel_model(tiny_llama(), SpielConfig(rank_equiv=2, seed=2)), seed=2)
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    composed = compose([tmp_path / "a", tmp_path / "b"], tiny_llama())
    reference = tiny_llama()
    with torch.no_grad():
        for name, module in reference.named_modules():
            if name in a.deltas:
                module.weight += a.deltas[name].delta_weight() + b.deltas[name].delta_weight()
        torch.testing.assert_close(composed(IDS).logits, reference(IDS).logits, rtol=1e-5, atol=1e-5)


def test_checkpoint_records_base_identity_and_versions(tmp_path):
    model = get_spiel_model(tiny_llama(), SpielConfig(rank_equiv=2))
    model.save_pretrained(tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "spiel_config.json").read_text())
    assert cfg["base_model"]["class"] == "LlamaForCausalLM" and cfg["spiel_version"]
    assert all(len(m["fingerprint"]) == 32 and len(m["shape"]) == 2 for m in cfg["modules"].values())


def test_plain_pytorch_module_works_too():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    model = get_spiel_model(net, SpielConfig(num_tunable=40))
    assert sorted(model.deltas) == ["0", "2"]
    model.allow_static_training()  # a gradient check, no reselection
    out = model(torch.randn(3, 8))
    out.sum().backward()
    assert all(layer.values.grad is not None for layer in model.deltas.values())
