"""Several named deltas over one base (load_delta, set_delta, unload) and weighted compose, against
dense references computed in plain torch."""

import copy
import json

import pytest
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir

from spiel import SpielConfig, compose, get_spiel_model
from spiel.checkpoint.read import InvalidCheckpointError
from spiel.cli.eval import run
from spiel.delta import SparseDeltaLinear
from spiel.eval.loader import CheckpointError, load_for_eval
from spiel.model.spiel_model import CheckpointMismatchError, SpielModel
from spiel.paths import CONFIG_DIR
from spiel.testing import tiny_model
from tests.core.test_model import IDS, tiny_llama, with_random_deltas
from tests.eval.test_eval_loading import dense_deltas, spiel_ckpt
from tests.helpers.paths import EVAL_FIXTURES


def save_delta(path, rank_equiv, seed, hidden=32):
    model = with_random_deltas(
        get_spiel_model(tiny_llama(hidden=hidden), SpielConfig(rank_equiv=rank_equiv, seed=seed)), seed=seed
    )
    model.save_pretrained(path)
    return {n: (layer.indices.clone(), layer.values.detach().clone()) for n, layer in model.deltas.items()}


@pytest.fixture
def ckpts(tmp_path):
    """Two checkpoints over tiny_llama() with different positions and different k."""
    return {
        "a": (tmp_path / "a", save_delta(tmp_path / "a", 2, seed=1)),
        "b": (tmp_path / "b", save_delta(tmp_path / "b", 4, seed=2)),
    }


def dense_reference(deltas_and_weights):
    """tiny_llama() with Σ w · scatter(indices, values) added to each target weight, in plain torch."""
    model = tiny_llama()
    with torch.no_grad():
        for deltas, weight in deltas_and_weights:
            for name, (indices, values) in deltas.items():
                w = model.get_submodule(name).weight
                dense = torch.zeros(w.numel())
                dense[indices.long()] = values.float()
                w += weight * dense.view_as(w)
    return model


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


def test_switching_a_b_a_is_bit_identical_to_each_loaded_alone(ckpts):
    (a_dir, a), (b_dir, b) = ckpts["a"], ckpts["b"]
    model = SpielModel.from_pretrained(tiny_llama(), a_dir)
    base_weights = {n: layer.weight for n, layer in model.deltas.items()}
    base_copy = {n: w.clone() for n, w in base_weights.items()}
    model.load_delta(b_dir, "b")
    assert model.delta_names == ["default", "b"] and model.active_delta == "default"
    a_alone = logits(SpielModel.from_pretrained(tiny_llama(), a_dir))
    b_alone = logits(SpielModel.from_pretrained(tiny_llama(), b_dir))
    assert not torch.equal(a_alone, b_alone)

    assert torch.equal(logits(model.set_delta("b")), b_alone)
    assert model.active_delta == "b" and model.num_tunable() == sum(i.numel() for i, _ in b.values())
    assert torch.equal(logits(model.set_delta("default")), a_alone)
    torch.testing.assert_close(a_alone, logits(dense_reference([(a, 1.0)])), rtol=1e-5, atol=1e-5)
    assert torch.equal(logits(model.set_delta("b")), b_alone)
    # the base was never copied, and comes back bit for bit: switching restores it (merged storage keeps
    # W + Δ in it between forwards), and so does restore_base
    model.set_delta("default")
    for name, layer in model.deltas.items():
        assert layer.weight is base_weights[name] and torch.equal(layer.weight, base_copy[name])
    assert torch.equal(logits(model.set_delta("b")), b_alone)
    for name, layer in model.deltas.items():
        assert not torch.equal(layer.weight, base_copy[name])  # W + Δ, kept between forwards
        layer.restore_base()
        assert layer.weight is base_weights[name] and torch.equal(layer.weight, base_copy[name])
    torch.testing.assert_close(logits(model), logits(dense_reference([(b, 1.0)])), rtol=1e-5, atol=1e-5)


def test_switching_does_not_copy_the_delta_and_keeps_the_active_one_current(ckpts):
    model = SpielModel.from_pretrained(tiny_llama(), ckpts["a"][0]).load_delta(ckpts["b"][0], "b")
    model.set_delta("b")
    values = {n: layer.values for n, layer in model.deltas.items()}
    model.set_delta("default").set_delta("b")
    assert all(layer.values is values[n] for n, layer in model.deltas.items())  # the set's own tensors
    with torch.no_grad():  # a change made while "b" is active is what "b" is afterwards
        for layer in model.deltas.values():
            layer.values.mul_(2)
    changed = logits(model)
    assert torch.equal(logits(model.set_delta("default").set_delta("b")), changed)


def test_invariants_hold_after_every_switch(ckpts):
    """A walk over three deltas (two of different k, one weighted mix of them), switching to each from each
    and to the active one again: after every switch each layer holds exactly the active set's positions
    (sorted, unique, its k), the model's config and tunable count are that set's, the base weights are the
    same tensors bit for bit, and the logits equal the dense reference of that delta alone."""
    (a_dir, a), (b_dir, b) = ckpts["a"], ckpts["b"]
    model = SpielModel.from_pretrained(tiny_llama(), a_dir).load_delta(b_dir, "b")
    model.add_weighted_delta(["default", "b"], [0.5, 2.0], "mix")
    # the mix's positions are the union; its values are checked through the logits
    mix = {n: (torch.unique(torch.cat([a[n][0].long(), b[n][0].long()])), None) for n in a}
    expected = {"default": a, "b": b, "mix": mix}
    references = {
        "default": logits(dense_reference([(a, 1.0)])),
        "b": logits(dense_reference([(b, 1.0)])),
        "mix": logits(dense_reference([(a, 0.5), (b, 2.0)])),
    }
    bases = {n: (layer.weight, layer.weight.clone()) for n, layer in model.deltas.items()}
    for name in ["b", "b", "mix", "default", "mix", "b", "default", "default"]:
        model.set_delta(name)
        assert model.active_delta == name and model.delta_names == ["default", "b", "mix"]
        ks = {n: int(expected[name][n][0].numel()) for n in model.deltas}
        assert model.spiel_config.num_deltas == ks and model.num_tunable() == sum(ks.values())
        for n, layer in model.deltas.items():
            idx = layer.indices
            assert layer.k == ks[n] == layer.values.numel() == layer.grown_at.numel(), (name, n)
            assert bool((idx[1:] > idx[:-1]).all()) and torch.equal(idx.long(), expected[name][n][0].long())
            assert layer.weight is bases[n][0] and torch.equal(layer.weight, bases[n][1]), (name, n)
        torch.testing.assert_close(logits(model), references[name], rtol=1e-5, atol=1e-5)
        for n, layer in model.deltas.items():  # the forward (merged storage: W + Δ) leaves a restorable base
            layer.restore_base()
            assert torch.equal(layer.weight, bases[n][1])
    with pytest.raises(ValueError, match="'default' is the active delta"):
        model.delete_delta("default")
    model.delete_delta("mix")
    with pytest.raises(KeyError, match=r"no delta named 'mix'; loaded: \['default', 'b'\]"):
        model.set_delta("mix")
    assert model.active_delta == "default"
    torch.testing.assert_close(logits(model), references["default"], rtol=1e-5, atol=1e-5)


def test_a_model_built_fresh_keeps_its_delta_as_default(ckpts):
    model = with_random_deltas(get_spiel_model(tiny_llama(), SpielConfig(rank_equiv=2, seed=7)), seed=7)
    own = logits(model)
    model.load_delta(ckpts["a"][0], "a")
    assert torch.equal(logits(model), own)  # loading does not activate
    torch.testing.assert_close(
        logits(model.set_delta("a")), logits(dense_reference([(ckpts["a"][1], 1.0)])), rtol=1e-5, atol=1e-5
    )
    assert torch.equal(logits(model.set_delta("default")), own)


def test_the_active_delta_can_be_set_before_any_load_delta(ckpts):
    """set_delta("default") on a model that never called load_delta: a no-op, not "no delta named
    'default'; loaded: ['default']"."""
    model = SpielModel.from_pretrained(tiny_llama(), ckpts["a"][0])
    own = logits(model)
    assert torch.equal(logits(model.set_delta("default")), own) and model.delta_names == ["default"]
    model.load_delta(ckpts["b"][0], "b").set_delta("b").set_delta("default")
    assert torch.equal(logits(model), own)
    with pytest.raises(KeyError, match=r"no delta named 'c'; loaded: \['default', 'b'\]"):
        model.set_delta("c")


def test_deltas_follow_the_model_to_another_device(ckpts):
    model = SpielModel.from_pretrained(tiny_llama(), ckpts["a"][0]).load_delta(ckpts["b"][0], "b")
    model.to("meta")  # moves the active delta only; "b" still sits on the CPU
    model.set_delta("b")
    for layer in model.deltas.values():
        assert {layer.indices.device.type, layer.values.device.type, layer.grown_at.device.type} == {"meta"}


def test_unload_gives_back_the_pristine_base(ckpts):
    base = tiny_llama()
    pristine = copy.deepcopy(base)
    model = SpielModel.from_pretrained(base, ckpts["a"][0]).load_delta(ckpts["b"][0], "b").set_delta("b")
    plain = model.unload()
    assert plain is base and not any(isinstance(m, SparseDeltaLinear) for m in plain.modules())
    assert torch.equal(logits(plain), logits(pristine))


def test_unload_and_switching_refuse_a_merged_layer(ckpts):
    model = SpielModel.from_pretrained(tiny_llama(), ckpts["a"][0]).load_delta(ckpts["b"][0], "b")
    next(iter(model.deltas.values())).merge()
    with pytest.raises(RuntimeError, match="cannot switch deltas: 1 layer.* merged .*unmerge"):
        model.set_delta("b")
    with pytest.raises(RuntimeError, match="cannot unload: 1 layer.* merged"):
        model.unload()


def test_load_delta_refuses_bad_names_and_unknown_deltas(ckpts):
    model = SpielModel.from_pretrained(tiny_llama(), ckpts["a"][0])
    with pytest.raises(ValueError, match="'default' is already loaded"):
        model.load_delta(ckpts["b"][0], "default")
    with pytest.raises(ValueError, match="non-empty string"):
        model.load_delta(ckpts["b"][0], "")
    with pytest.raises(KeyError, match="no delta named 'c'"):
        model.set_delta("c")
    model.load_delta(ckpts["b"][0], "b")
    with pytest.raises(ValueError, match="'b' is already loaded"):
        model.load_delta(ckpts["a"][0], "b")


def test_delete_delta_forgets_an_inactive_one_only(ckpts):
    model = SpielModel.from_pretrained(tiny_llama(), ckpts["a"][0]).load_delta(ckpts["b"][0], "b")
    with pytest.raises(ValueError, match="'default' is the active delta"):
        model.delete_delta("default")
    model.delete_delta("b")
    assert model.delta_names == ["default"]
    with pytest.raises(KeyError, match="no delta named 'b'"):
        model.set_delta("b")
    with pytest.raises(KeyError, match="no delta named 'b'"):
        model.delete_delta("b")


def test_switching_is_refused_while_training_with_a_selector(ckpts):
    model = SpielModel.from_pretrained(tiny_llama(), ckpts["a"][0], is_trainable=True).load_delta(
        ckpts["b"][0], "b"
    )
    selector = model.make_selector(model.make_optimizer(lr=1e-3), total_steps=10)
    with pytest.raises(RuntimeError, match="set_delta is for inference.*live selector"):
        model.set_delta("b")
    assert selector is not None and model.active_delta == "default"


def test_load_delta_checks_the_files_and_the_base(ckpts, tmp_path):
    model = SpielModel.from_pretrained(tiny_llama(), ckpts["a"][0])
    before = logits(model)
    other = tmp_path / "other_base"
    with_random_deltas(get_spiel_model(tiny_llama(seed=3), SpielConfig(rank_equiv=2))).save_pretrained(other)
    with pytest.raises(CheckpointMismatchError, match="base weights differ"):
        model.load_delta(other, "other")
    damaged = ckpts["b"][0] / "spiel_delta.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-8])
    with pytest.raises(InvalidCheckpointError, match="damaged"):
        model.load_delta(ckpts["b"][0], "b")
    with pytest.raises(FileNotFoundError, match="no such"):
        model.load_delta(tmp_path / "missing", "m")
    assert model.delta_names == ["default"] and torch.equal(logits(model), before)


def test_load_delta_refuses_other_target_modules(ckpts, tmp_path):
    model = SpielModel.from_pretrained(tiny_llama(), ckpts["a"][0])
    attention_only = get_spiel_model(
        tiny_llama(), SpielConfig(rank_equiv=2, target_modules=["q_proj", "v_proj"])
    )
    attention_only.save_pretrained(tmp_path / "qv")
    with pytest.raises(CheckpointMismatchError, match="other modules than this SpielModel wraps"):
        model.load_delta(tmp_path / "qv", "qv")


def test_weighted_compose_equals_the_weighted_dense_sum(ckpts):
    (a_dir, a), (b_dir, b) = ckpts["a"], ckpts["b"]
    composed = compose([a_dir, b_dir], tiny_llama(), weights=[0.7, -0.4])
    reference = dense_reference([(a, 0.7), (b, -0.4)])
    torch.testing.assert_close(logits(composed), logits(reference), rtol=1e-5, atol=1e-5)
    unweighted = logits(dense_reference([(a, 1.0), (b, 1.0)]))
    assert not torch.allclose(logits(composed), unweighted, atol=1e-4)


def test_add_weighted_delta_equals_the_weighted_dense_sum(ckpts):
    (a_dir, a), (b_dir, b) = ckpts["a"], ckpts["b"]
    model = SpielModel.from_pretrained(tiny_llama(), a_dir).load_delta(b_dir, "b")
    a_alone = logits(model)
    model.add_weighted_delta(["default", "b"], [0.7, -0.4], "mix")
    assert torch.equal(logits(model), a_alone)  # not activated
    model.set_delta("mix")
    torch.testing.assert_close(
        logits(model), logits(dense_reference([(a, 0.7), (b, -0.4)])), rtol=1e-5, atol=1e-5
    )
    union = {n: torch.unique(torch.cat([a[n][0].long(), b[n][0].long()])) for n in a}
    assert all(torch.equal(layer.indices.long(), union[n]) for n, layer in model.deltas.items())
    assert torch.equal(logits(model.set_delta("default")), a_alone)


def test_a_fresh_model_can_scale_its_own_delta(ckpts):
    model = SpielModel.from_pretrained(tiny_llama(), ckpts["a"][0])
    model.add_weighted_delta(["default"], [0.5], "half").set_delta("half")
    torch.testing.assert_close(
        logits(model), logits(dense_reference([(ckpts["a"][1], 0.5)])), rtol=1e-5, atol=1e-5
    )


def test_add_weighted_delta_refuses_unknown_or_taken_names_and_bad_weights(ckpts):
    model = SpielModel.from_pretrained(tiny_llama(), ckpts["a"][0]).load_delta(ckpts["b"][0], "b")
    with pytest.raises(KeyError, match="no delta named \\['c'\\] to combine"):
        model.add_weighted_delta(["b", "c"], [1, 1], "mix")
    with pytest.raises(KeyError, match="no delta named \\[\\] to combine"):
        model.add_weighted_delta([], [], "mix")
    with pytest.raises(ValueError, match="'b' is already loaded"):
        model.add_weighted_delta(["default", "b"], [1, 1], "b")
    with pytest.raises(ValueError, match="weights has 1 entries for 2"):
        model.add_weighted_delta(["default", "b"], [1], "mix")
    assert model.delta_names == ["default", "b"]


@pytest.mark.parametrize(
    "weights, message",
    [
        ([1.0], "weights has 1 entries for 2 checkpoint"),
        ([1.0, float("nan")], "finite numbers, got nan"),
        ([1.0, "x"], "finite numbers, got 'x'"),
    ],
)
def test_compose_refuses_bad_weights(ckpts, weights, message):
    with pytest.raises(ValueError, match=message):
        compose([ckpts["a"][0], ckpts["b"][0]], tiny_llama(), weights=weights)


# The result is checked, not only the weights: finite weights can overflow float32 or sum past what a
# delta can be (spiel.delta.bounds); nothing is kept or written then.
@pytest.mark.parametrize(
    "weights, message",
    [
        ([1e39, 1.0], r"in model\.layers\.\d\.\S+, \d+ non-finite value\(s\) of \d+ \(NaN/Inf"),
        ([3e5, 0.0], r"beyond ±10000"),
    ],
)
def test_weighted_results_past_the_bound_are_refused_everywhere(ckpts, tmp_path, weights, message):
    from spiel.checkpoint.fingerprint import DeltaValueError
    from spiel.cli.export import export

    (a_dir, _), (b_dir, _) = ckpts["a"], ckpts["b"]
    with pytest.raises(DeltaValueError, match=message):
        compose([a_dir, b_dir], tiny_llama(), weights=weights)
    model = SpielModel.from_pretrained(tiny_llama(), a_dir).load_delta(b_dir, "b")
    with pytest.raises(DeltaValueError, match=message):
        model.add_weighted_delta(["default", "b"], weights, "mix")
    assert model.delta_names == ["default", "b"]
    a, b = spiel_ckpt(tmp_path / "a", seed=1), spiel_ckpt(tmp_path / "b", seed=2)
    with pytest.raises(DeltaValueError, match=message):
        export([str(a), str(b)], tmp_path / "out", dtype="float32", ckpt_weights=weights)
    assert not (tmp_path / "out").exists()


def test_a_weighted_result_exactly_at_the_bound_is_kept(ckpts):
    (a_dir, a) = ckpts["a"]
    largest = max(float(values.abs().max()) for _, values in a.values())
    model = SpielModel.from_pretrained(tiny_llama(), a_dir)
    model.add_weighted_delta(["default"], [1e4 / largest * (1 - 1e-6)], "scaled")
    with pytest.raises(CheckpointMismatchError, match=r"beyond ±10000"):
        model.add_weighted_delta(["default"], [1e4 / largest * (1 + 1e-6)], "past")


# -- spiel-eval ckpt=[a,b] ckpt_weights=[...] ----------------------------------------------------------------
def test_eval_ckpt_weights_gives_the_weighted_dense_sum(tmp_path):

    a, b = spiel_ckpt(tmp_path / "a", seed=1), spiel_ckpt(tmp_path / "b", seed=2)
    loaded = load_for_eval([str(a), str(b)], device="cpu", ckpt_weights=[0.5, 2])
    assert loaded.info["kind"] == "composed" and loaded.info["ckpt_weights"] == [0.5, 2.0]
    da, db = dense_deltas(a), dense_deltas(b)
    base, got = dict(tiny_model().named_modules()), dict(loaded.model.named_modules())
    for name in da:
        torch.testing.assert_close(
            got[name].weight, base[name].weight + 0.5 * da[name] + 2 * db[name], rtol=0, atol=1e-6
        )
    one = load_for_eval([str(a)], device="cpu", ckpt_weights=[0.5])  # one checkpoint, scaled
    for name in da:
        torch.testing.assert_close(
            dict(one.model.named_modules())[name].weight,
            base[name].weight + 0.5 * da[name],
            rtol=0,
            atol=1e-6,
        )

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(
            "eval",
            overrides=[
                "model=tiny",
                f"eval.data_dir={EVAL_FIXTURES}",
                "eval.progress=false",
                f"eval.output_dir={tmp_path / 'run'}",
                "bench=demo",
                "eval.limit=2",
                f"ckpt=[{a},{b}]",
                "ckpt_weights=[0.5,2]",
            ],
        )
    run(cfg)
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["ckpt_weights"] == [0.5, 2.0] and info["label"] == "0.5·a ⊕ 2·b"


@pytest.mark.parametrize(
    "ckpts, weights, message",
    [
        (["a", "b"], [1.0], r"ckpt_weights=\[1.0\]: weights has 1 entries for 2 checkpoint"),
        (None, [1.0], "ckpt_weights is given but ckpt=null"),
        (["a", "b"], [1.0, float("inf")], "finite numbers, got inf"),
    ],
)
def test_eval_refuses_bad_ckpt_weights_before_loading(tmp_path, ckpts, weights, message):
    with pytest.raises(CheckpointError, match=message):  # the directories do not even exist: checked first
        load_for_eval(
            None if ckpts is None else [str(tmp_path / c) for c in ckpts],
            model_name="tiny",
            device="cpu",
            ckpt_weights=weights,
        )


def test_eval_refuses_weights_on_a_peft_adapter(tmp_path):
    peft_dir = tmp_path / "adapter"
    peft_dir.mkdir()
    (peft_dir / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "tiny"}))
    with pytest.raises(CheckpointError, match="only SpIEL checkpoints can be composed"):
        load_for_eval([str(peft_dir)], device="cpu", ckpt_weights=[0.5])


def test_export_ckpt_weights_merges_the_weighted_sum(tmp_path):
    from transformers import AutoModelForCausalLM

    from spiel.cli.export import export

    a, b = spiel_ckpt(tmp_path / "a", seed=1), spiel_ckpt(tmp_path / "b", seed=2)
    out = export([str(a), str(b)], tmp_path / "out", dtype="float32", ckpt_weights=[0.25, -1])
    assert json.loads((out / "spiel_export.json").read_text())["ckpt_weights"] == [0.25, -1.0]
    got = dict(AutoModelForCausalLM.from_pretrained(out).named_modules())
    base = dict(tiny_model().named_modules())
    da, db = dense_deltas(a), dense_deltas(b)
    for name in da:
        torch.testing.assert_close(
            got[name].weight, base[name].weight + 0.25 * da[name] - db[name], rtol=0, atol=1e-6
        )


def test_eval_cli_exits_2_on_bad_ckpt_weights(tmp_path):
    from tests.eval.test_eval_run import _cli

    out = _cli(
        "model=tiny",
        "bench=demo",
        f"ckpt=[{tmp_path / 'a'},{tmp_path / 'b'}]",
        "ckpt_weights=[1]",
        cwd=tmp_path,
    )
    assert out.returncode == 2
    assert "ckpt_weights=[1]: weights has 1 entries for 2 checkpoint(s)" in out.stderr
