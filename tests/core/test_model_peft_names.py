"""peft's habits on a SpielModel: print_trainable_parameters, target_modules="all-linear",
disable_delta() as peft's disable_adapter, peft's adapter names (working or refused with spiel's message),
and AutoSpielModelForCausalLM loading the base a checkpoint records. References: plain parameter counts,
plain module listings, the base model's own logits and a dense weight sum (tests.core.test_delta_sets)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from spiel import AutoSpielModelForCausalLM, SpielConfig, get_spiel_model
from spiel.model.peft_names import NO_SPIEL_EQUIVALENT
from spiel.model.spiel_model import SpielModel
from tests.core.test_delta_sets import dense_reference, logits, save_delta
from tests.core.test_model import IDS, tiny_llama, with_random_deltas


def spiel(seed=0, **config):
    return with_random_deltas(get_spiel_model(tiny_llama(), SpielConfig(rank_equiv=2, seed=seed, **config)))


def test_print_trainable_parameters_counts_as_peft_does(capsys):
    model = spiel()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)  # peft's definition
    total = sum(p.numel() for p in model.parameters())
    model.print_trainable_parameters()
    assert capsys.readouterr().out.strip() == (
        f"trainable params: {trainable:,d} || all params: {total:,d} || "
        f"trainable%: {100 * trainable / total:.4f}"
    )
    assert model.get_nb_trainable_parameters() == (trainable, total) and trainable == model.num_tunable()


def test_a_checkpoint_loaded_for_inference_has_nothing_trainable(tmp_path):
    save_delta(tmp_path / "a", 2, seed=1)
    frozen = SpielModel.from_pretrained(tiny_llama(), tmp_path / "a")
    assert frozen.get_nb_trainable_parameters()[0] == 0
    trainable = SpielModel.from_pretrained(tiny_llama(), tmp_path / "a", is_trainable=True)
    assert trainable.get_nb_trainable_parameters()[0] == trainable.num_tunable() > 0


def test_all_linear_is_every_linear_layer_but_the_head():
    base = tiny_llama()
    expected = sorted(n for n, m in base.named_modules() if isinstance(m, nn.Linear) and n != "lm_head")
    model = get_spiel_model(base, SpielConfig(rank_equiv=2, target_modules="all-linear"))
    assert sorted(model.deltas) == expected
    assert (
        model.spiel_config.num_deltas
        == get_spiel_model(tiny_llama(), SpielConfig(rank_equiv=2)).spiel_config.num_deltas
    )


@pytest.mark.parametrize("merged_storage", [True, False])
def test_disable_delta_runs_the_base_alone_and_restores_the_delta(merged_storage):
    model = spiel(merged_storage=merged_storage)
    with_delta = logits(model)
    base_only = logits(tiny_llama())
    assert not torch.allclose(with_delta, base_only)
    with model.disable_delta() as same:
        assert same is model
        torch.testing.assert_close(logits(model), base_only, rtol=0, atol=0)
    torch.testing.assert_close(logits(model), with_delta, rtol=0, atol=0)
    with model.disable_adapter():  # peft's name
        torch.testing.assert_close(logits(model), base_only, rtol=0, atol=0)
    with pytest.raises(ValueError), model.disable_delta():  # the deltas come back after an error too
        raise ValueError
    torch.testing.assert_close(logits(model), with_delta, rtol=0, atol=0)


def test_disable_delta_in_training_mode_needs_no_selector():
    """A reference model's log-probs (DPO-style) are computed in training mode, without deltas."""
    model = spiel().train()
    with pytest.raises(RuntimeError, match="without a selector"):
        model(IDS)
    with model.disable_delta():
        model.model.train()
        torch.testing.assert_close(model(IDS).logits, tiny_llama().train()(IDS).logits, rtol=0, atol=0)


def test_disable_delta_refuses_a_merged_layer():
    model = spiel()
    next(iter(model.deltas.values())).merge()
    with pytest.raises(RuntimeError, match="merged"), model.disable_delta():
        pass


def test_peft_adapter_names_work_as_their_spiel_counterparts(tmp_path):
    a = save_delta(tmp_path / "a", 2, seed=1)
    model = SpielModel.from_pretrained(tiny_llama(), tmp_path / "a")
    b = save_delta(tmp_path / "b", 4, seed=2)
    model.load_adapter(str(tmp_path / "b"), adapter_name="b")
    model.set_adapter("b")
    assert model.active_adapter == "b"
    torch.testing.assert_close(logits(model), logits(dense_reference([(b, 1.0)])), rtol=1e-5, atol=1e-5)
    model.set_adapter("default")
    model.delete_adapter("b")
    assert model.delta_names == ["default"]
    torch.testing.assert_close(logits(model), logits(dense_reference([(a, 1.0)])), rtol=1e-5, atol=1e-5)
    assert model.get_base_model() is model.model
    with pytest.raises(TypeError, match="from_pretrained"):
        model.load_adapter(str(tmp_path / "b"), adapter_name="b", is_trainable=True)


@pytest.mark.parametrize("name", sorted(NO_SPIEL_EQUIVALENT))
def test_other_peft_names_are_refused_with_spiels_message(name):
    """Forwarded to the wrapped LlamaForCausalLM they answered with messages about PEFT versions."""
    model = spiel()
    with pytest.raises(AttributeError, match=f"SpielModel has no '{name}'.*use ") as error:
        getattr(model, name)
    assert "LlamaForCausalLM" not in str(error.value) and "PEFT" not in str(error.value)
    assert not hasattr(model, name)


def test_auto_model_loads_the_base_the_checkpoint_records(tmp_path):
    base_dir = tmp_path / "my-base"
    tiny_llama().save_pretrained(base_dir)
    from transformers import AutoModelForCausalLM

    model = with_random_deltas(
        get_spiel_model(
            AutoModelForCausalLM.from_pretrained(base_dir).eval(), SpielConfig(rank_equiv=2, seed=3)
        )
    )
    expected = logits(model)
    model.save_pretrained(tmp_path / "delta")
    loaded = AutoSpielModelForCausalLM.from_pretrained(tmp_path / "delta", dtype="float32", device="cpu")
    assert isinstance(loaded, SpielModel)
    torch.testing.assert_close(logits(loaded), expected, rtol=1e-5, atol=1e-5)
    assert loaded.get_nb_trainable_parameters()[0] == 0


def test_auto_model_names_the_missing_base(tmp_path):
    base_dir = tmp_path / "gone"
    tiny_llama().save_pretrained(base_dir)
    from transformers import AutoModelForCausalLM

    get_spiel_model(
        AutoModelForCausalLM.from_pretrained(base_dir), SpielConfig(rank_equiv=2)
    ).save_pretrained(tmp_path / "delta")
    import shutil

    shutil.rmtree(base_dir)
    with pytest.raises(OSError, match=f"{base_dir}.*recorded in.*base_model="):
        AutoSpielModelForCausalLM.from_pretrained(tmp_path / "delta", device="cpu")
