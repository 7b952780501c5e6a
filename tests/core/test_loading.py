"""spiel.io.base_model: aliases, dtype and device choice, NF4, and the alias kept as the recorded base name."""

from __future__ import annotations

import pytest
import torch

from spiel import SpielConfig, get_spiel_model
from spiel.io.base_model import (
    MODEL_ALIASES,
    load_base_model,
    load_tokenizer,
    resolve_dtype,
    resolve_model_path,
)
from spiel.model.spiel_model import read_spiel_config
from spiel.testing import TINY_MODEL_DIR


def test_alias_resolves_to_the_shipped_model_and_other_names_pass_through():
    assert resolve_model_path("tiny") == str(TINY_MODEL_DIR)
    assert resolve_model_path("meta-llama/Llama-2-7b-hf") == "meta-llama/Llama-2-7b-hf"
    with pytest.raises(ValueError, match="model="):
        resolve_model_path(None)


def test_missing_alias_assets_say_how_to_regenerate(monkeypatch, tmp_path):
    monkeypatch.setitem(MODEL_ALIASES, "tiny", tmp_path / "gone")
    with pytest.raises(FileNotFoundError, match="make_tiny_model.py"):
        resolve_model_path("tiny")


def test_dtype_choice():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32  # bf16 matmuls are slow on CPU
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("float8", cpu)


def test_load_base_model_dtype_device_and_recorded_name(tmp_path):
    model = load_base_model("tiny", dtype="bfloat16", device="cpu")
    assert next(model.parameters()).dtype == torch.bfloat16 and not model.training
    assert model.config._name_or_path == "tiny"
    # a checkpoint made from it names its base "tiny", which resolves on any checkout
    spiel = get_spiel_model(load_base_model("tiny", dtype="float32"), SpielConfig(rank_equiv=1))
    spiel.save_pretrained(tmp_path / "ck", tokenizer=load_tokenizer("tiny"))
    assert read_spiel_config(tmp_path / "ck")["base_model"]["name_or_path"] == "tiny"
    with pytest.raises(ValueError, match="quant"):
        load_base_model("tiny", quant="int3")


def test_nf4_quantizes_the_linear_layers():
    import bitsandbytes as bnb

    model = load_base_model("tiny", quant="nf4", device="cpu")
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q, bnb.nn.Linear4bit) and q.weight.quant_type == "nf4"
    assert q.weight.quant_state.nested  # double quantization
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 40, 50]])).logits).all()


def test_nf4_runs_every_4bit_layer_in_eval_mode_on_this_cpu():
    """bitsandbytes' AVX512-BF16 CPU kernel (eval mode, no gradients) packs weights in blocks of 32 output
    rows and needs in_features to be whole quantization blocks (64); the tiny model's MLP (688) cannot be
    packed. Every 4-bit layer, packable or not, must give
    x · dequantize(W)ᵀ on whatever CPU runs this (on an AMD EPYC with AVX512-BF16 it crashed)."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    model = load_base_model("tiny", quant="nf4", device="cpu")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert any(m.out_features % 32 or m.in_features % 64 for m in layers.values())  # the crashing case
    x = torch.randn(
        3, model.config.hidden_size, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(0)
    )
    for name, layer in layers.items():
        inp = (
            x if layer.in_features == x.shape[1] else torch.randn(3, layer.in_features, dtype=torch.bfloat16)
        )
        reference = inp.float() @ F.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float().T
        with torch.no_grad():
            out = layer(inp).float()
        assert torch.allclose(out, reference, rtol=0.05, atol=0.05), name
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 40, 50]])).logits).all()


def test_nf4_layers_the_packed_cpu_kernel_cannot_take_use_the_generic_one(caplog):
    """The guard itself, on any CPU: with packing assumed, exactly the layers whose out_features is not
    a multiple of 32 or whose in_features is not one of 64 are sent to the generic kernel, and the log
    says so."""
    from spiel.io.base_model import keep_unpackable_nf4_layers_unpacked

    model = load_base_model("tiny", quant="nf4", device="cpu")
    with caplog.at_level("INFO", logger="spiel.io.base_model"):
        names = keep_unpackable_nf4_layers_unpacked(model, cpu_packs=True)
    mlp = [n for n, _ in model.named_modules() if n.endswith(("gate_proj", "up_proj", "down_proj"))]
    assert sorted(names) == sorted(mlp)  # 688 rows (gate, up) or 688 columns (down); attention is 256 wide
    assert all(model.get_submodule(n).support_avx512bf16_for_cpu is False for n in names)
    assert "generic NF4 kernel" in caplog.text
    assert keep_unpackable_nf4_layers_unpacked(model, cpu_packs=False) == []


def test_a_bitsandbytes_without_the_packed_cpu_kernel_needs_no_rerouting(monkeypatch):
    """Older bitsandbytes (the floor in pyproject.toml) has neither the packed CPU kernel nor its probe."""
    import bitsandbytes.functional

    from spiel.io.base_model import keep_unpackable_nf4_layers_unpacked

    model = load_base_model("tiny", quant="nf4", device="cpu")
    monkeypatch.setattr(bitsandbytes.functional, "has_avx512bf16", lambda: True)
    assert keep_unpackable_nf4_layers_unpacked(model)  # the probe is asked: the MLP layers are rerouted
    monkeypatch.delattr(bitsandbytes.functional, "has_avx512bf16")
    assert keep_unpackable_nf4_layers_unpacked(load_base_model("tiny", quant="nf4", device="cpu")) == []
