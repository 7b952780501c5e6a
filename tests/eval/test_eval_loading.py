"""What `ckpt=` may be: a SpIEL checkpoint, a list of them (composed), a peft adapter, a full model
directory, or null; composition equals the summed deltas; a checkpoint of another base is refused."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from spiel import SpielConfig, get_spiel_model
from spiel.eval.loader import CheckpointError, checkpoint_kind, load_for_eval
from spiel.model.spiel_model import CheckpointMismatchError, SpielModel
from spiel.testing import TINY_MODEL_DIR, tiny_model, tiny_tokenizer

IDS = torch.tensor([[1, 40, 77, 90, 12, 55, 8]])


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


def spiel_ckpt(path, seed, base=None, targets=None):
    """A SpIEL checkpoint of the tiny model (or `base`) with random nonzero deltas."""
    base = base if base is not None else tiny_model()
    model = get_spiel_model(base, SpielConfig(rank_equiv=2, seed=seed, target_modules=targets))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.deltas.values():
            layer.values.copy_(torch.randn(layer.k, generator=g) * 0.05)
    model.save_pretrained(path, tokenizer=tiny_tokenizer())
    return path


def dense_deltas(path) -> dict[str, torch.Tensor]:
    """{module name: dense [out, in] delta} read back from a checkpoint through the public loader."""
    wrapped = SpielModel.from_pretrained(tiny_model(), path)
    out = {}
    for name, layer in wrapped.deltas.items():
        d = torch.zeros(layer.out_features * layer.in_features)
        d[layer.indices.long()] = layer.values.detach().float()
        out[name] = d.view(layer.out_features, layer.in_features)
    return out


def test_null_ckpt_is_the_base_model_and_needs_a_model(tmp_path):
    loaded = load_for_eval(None, model_name="tiny", device="cpu")
    assert loaded.info["kind"] == "base" and torch.equal(logits(loaded.model), logits(tiny_model()))
    with pytest.raises(CheckpointError, match="model="):
        load_for_eval(None, model_name=None)


def test_spiel_checkpoint_loads_on_its_recorded_base_with_the_delta_merged(tmp_path):
    path = spiel_ckpt(tmp_path / "a", seed=1)
    assert checkpoint_kind(path) == "spiel"
    loaded = load_for_eval(str(path), device="cpu")  # the base comes from spiel_config.json
    assert (
        loaded.info["kind"] == "spiel"
        and loaded.info["base"] == str(TINY_MODEL_DIR)
        and loaded.info["merged"]
    )
    assert not isinstance(loaded.model, SpielModel)  # merged into plain linear layers
    reference = SpielModel.from_pretrained(tiny_model(), path)  # unmerged, delta applied on the fly
    assert torch.allclose(logits(loaded.model), logits(reference), atol=1e-5)
    assert not torch.allclose(logits(loaded.model), logits(tiny_model()), atol=1e-3)  # the delta matters


def test_composition_equals_the_sum_of_the_deltas_applied_to_the_base(tmp_path):
    a = spiel_ckpt(tmp_path / "a", seed=1)
    b = spiel_ckpt(tmp_path / "b", seed=2)
    loaded = load_for_eval([str(a), str(b)], device="cpu")
    assert loaded.info["kind"] == "composed"
    da, db = dense_deltas(a), dense_deltas(b)
    base = dict(tiny_model().named_modules())
    got = dict(loaded.model.named_modules())
    overlap = 0
    for name in da:
        expected = base[name].weight + da[name] + db[name]
        assert torch.allclose(got[name].weight, expected, atol=1e-6), name
        overlap += int(((da[name] != 0) & (db[name] != 0)).sum())
    assert overlap > 0  # some positions are in both checkpoints, so summing (not overwriting) is tested
    untouched = [n for n, p in tiny_model().named_parameters() if "proj" not in n]
    params = dict(loaded.model.named_parameters())
    assert all(torch.equal(params[n], dict(tiny_model().named_parameters())[n]) for n in untouched)


def test_each_spiel_checkpoint_is_read_and_checked_once(tmp_path, monkeypatch):
    """spiel-eval checks every file before the base loads and then builds the model from what it read:
    each spiel_config.json and each delta file (its SHA-256 and every tensor check) is read once."""
    a, b = spiel_ckpt(tmp_path / "a", seed=1), spiel_ckpt(tmp_path / "b", seed=2)
    reads = collections.Counter()
    read_bytes, read_text = Path.read_bytes, Path.read_text
    monkeypatch.setattr(
        Path,
        "read_bytes",
        lambda self: reads.update([self.relative_to(tmp_path).as_posix()]) or read_bytes(self),
    )
    monkeypatch.setattr(
        Path, "read_text", lambda self, *a, **k: reads.update([str(self)]) or read_text(self, *a, **k)
    )
    load_for_eval(str(a), device="cpu")
    assert reads == {"a/spiel_config.json": 1, "a/spiel_delta.safetensors": 1}
    reads.clear()
    load_for_eval([str(a), str(b)], device="cpu")
    assert reads == {f"{c}/spiel_{f}": 1 for c in "ab" for f in ("config.json", "delta.safetensors")}


def test_a_tokenizer_with_an_added_token_grows_the_embeddings_deterministically(tmp_path):
    path = spiel_ckpt(tmp_path / "a", seed=1)
    tok = tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|extra|>"]})
    tok.save_pretrained(path)
    first = load_for_eval(str(path), device="cpu").model
    second = load_for_eval(str(path), device="cpu").model
    n = first.get_input_embeddings().num_embeddings
    assert n == len(tok) == tiny_model().get_input_embeddings().num_embeddings + 1
    base_emb = tiny_model().get_input_embeddings().weight
    assert torch.allclose(first.get_input_embeddings().weight[-1], base_emb.mean(0))
    assert torch.equal(logits(first), logits(second))


def test_peft_adapter_loads_merged(tmp_path):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        tiny_model(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    expected = logits(peft_model)
    peft_model.save_pretrained(tmp_path / "lora")
    assert checkpoint_kind(tmp_path / "lora") == "peft"
    loaded = load_for_eval(str(tmp_path / "lora"), model_name="tiny", device="cpu")
    assert loaded.info["kind"] == "peft" and loaded.info["merged"]
    assert torch.allclose(logits(loaded.model), expected, atol=1e-5)
    assert not torch.allclose(expected, logits(tiny_model()), atol=1e-3)


def test_full_model_directory_loads_as_it_is(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(1.5)
    model.save_pretrained(tmp_path / "full")
    tiny_tokenizer().save_pretrained(tmp_path / "full")
    loaded = load_for_eval(str(tmp_path / "full"), device="cpu", dtype="float32")
    assert loaded.info["kind"] == "full"
    assert torch.allclose(logits(loaded.model), logits(model), atol=1e-6)


def test_checkpoint_of_another_base_is_refused_with_a_clear_message(tmp_path):
    other = tiny_model()
    with torch.no_grad():  # same architecture, different weights (another base model)
        for p in other.parameters():
            p.copy_(torch.randn_like(p) * 0.02)
    path = spiel_ckpt(tmp_path / "other", seed=3, base=other)
    with pytest.raises(CheckpointMismatchError, match="base weights differ"):
        load_for_eval(str(path), model_name="tiny", device="cpu")
    with pytest.raises(CheckpointMismatchError, match="base weights differ"):
        load_for_eval(
            [str(spiel_ckpt(tmp_path / "mine", seed=4)), str(path)], model_name="tiny", device="cpu"
        )

    small = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=263,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).eval()
    shaped = spiel_ckpt(tmp_path / "shapes", seed=5, base=small)
    with pytest.raises(CheckpointMismatchError, match="shape mismatch"):
        load_for_eval(str(shaped), model_name="tiny", device="cpu")


def test_peft_adapter_for_another_architecture_is_refused(tmp_path):
    from peft import LoraConfig, get_peft_model

    small = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=263,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    get_peft_model(small, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "lora")
    with pytest.raises(CheckpointMismatchError, match="does not fit the base model"):
        load_for_eval(str(tmp_path / "lora"), model_name="tiny", device="cpu")


def test_not_a_checkpoint_and_mixed_composition_fail_clearly(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither a SpIEL checkpoint"):
        load_for_eval(str(tmp_path / "empty"), model_name="tiny")
    with pytest.raises(CheckpointError, match="no such directory"):
        load_for_eval(str(tmp_path / "missing"), model_name="tiny")
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "spiel_delta.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="interrupted save"):
        load_for_eval(str(tmp_path / "partial"), model_name="tiny")
    full = tmp_path / "full"
    tiny_model().save_pretrained(full)
    with pytest.raises(CheckpointError, match="only SpIEL checkpoints can be composed"):
        load_for_eval([str(spiel_ckpt(tmp_path / "a", seed=1)), str(full)], model_name="tiny")


@pytest.mark.slow
def test_nf4_base_keeps_the_delta_unmerged_and_runs(tmp_path):
    from spiel.delta import is_quantized

    path = spiel_ckpt(tmp_path / "a", seed=1, targets=["q_proj", "down_proj"])
    loaded = load_for_eval(str(path), quant="nf4", device="cpu")
    assert isinstance(loaded.model, SpielModel) and not loaded.info["merged"]
    assert all(is_quantized(layer.weight) for layer in loaded.model.deltas.values())
    assert torch.isfinite(logits(loaded.model)).all()
    composed = load_for_eval(
        [str(path), str(spiel_ckpt(tmp_path / "b", seed=2, targets=["q_proj", "down_proj"]))],
        quant="nf4",
        device="cpu",
    )
    assert isinstance(composed.model, SpielModel)
    plain = load_for_eval(str(path), device="cpu")  # the NF4 result approximates the full-precision one
    a, b = logits(loaded.model), logits(plain.model)
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.9


def test_a_4bit_base_is_evaluated_with_embeddings_norms_and_head_in_float32(tmp_path, monkeypatch):
    """As the reference's 4-bit evaluation: what is not quantized runs in float32 (its bf16 values cast
    without loss), the 4-bit weights stay 4-bit and the delta stays unmerged."""
    import spiel.eval.loader as loader
    from spiel.delta.weights import is_quantized

    path = spiel_ckpt(tmp_path / "a", seed=1)
    loaded = load_for_eval(str(path), quant="nf4", dtype="bfloat16", device="cpu").model
    params = dict(loaded.named_parameters())
    plain = [n for n in params if n.endswith(("embed_tokens.weight", "norm.weight", "lm_head.weight"))]
    assert len(plain) == 2 + 2 * 4 + 1  # embeddings, head, the final norm and two per decoder layer
    assert all(params[n].dtype == torch.float32 for n in plain)
    assert sum(is_quantized(p) for p in params.values()) == 7 * 4 and isinstance(loaded, SpielModel)

    monkeypatch.setattr(loader, "upcast_unquantized", lambda model: [])
    bf16 = load_for_eval(str(path), quant="nf4", dtype="bfloat16", device="cpu").model
    bf16_params = dict(bf16.named_parameters())
    assert all(
        bf16_params[n].dtype == torch.bfloat16 and torch.equal(bf16_params[n].float(), params[n])
        for n in plain
    )  # the same values, only wider
    assert logits(loaded).dtype == torch.float32
    assert not torch.equal(logits(loaded), logits(bf16).float())  # the upcast changes the computation
