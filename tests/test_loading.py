"""spiel.loading: aliases, dtype and device choice, NF4, and the alias kept as the recorded base name."""

from __future__ import annotations

import pytest
import torch

from spiel import SpielConfig, get_spiel_model
from spiel.loading import MODEL_ALIASES, load_base_model, load_tokenizer, resolve_dtype, resolve_model_path
from spiel.model import read_spiel_config
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
