"""Details of the model API that a plausible one-line bug would break silently: weight decay reaching
both optimizers, regex targets matched against the whole name, the base fingerprint of a merged
layer, and growth ages surviving save/load."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from spiel import SpielConfig, get_spiel_model
from spiel.checkpoint.fingerprint import weight_fingerprint
from spiel.checkpoint.format import FINGERPRINT_SIZE
from spiel.delta import SparseDeltaLinear
from spiel.model.spiel_model import SpielModel
from spiel.testing import tiny_model


def small_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 10), nn.Linear(10, 12))


@pytest.mark.parametrize("method", ["ag", "ma"])
def test_make_optimizer_applies_weight_decay(method):
    """With a zero gradient, one step is pure decoupled decay: p <- p (1 - lr wd), as torch.optim.AdamW."""
    model = get_spiel_model(small_net(), SpielConfig(method=method, num_tunable=40))
    values = [layer.values for layer in model.deltas.values()]
    with torch.no_grad():
        for v in values:
            v.copy_(torch.randn_like(v))
    original = [v.detach().clone() for v in values]
    dense = [v.detach().clone().requires_grad_(True) for v in values]
    reference = torch.optim.AdamW(dense, lr=0.1, weight_decay=0.5)
    opt = model.make_optimizer(lr=0.1, weight_decay=0.5)
    for v, d in zip(values, dense, strict=True):
        v.grad, d.grad = torch.zeros_like(v), torch.zeros_like(d)
    opt.step()
    reference.step()
    for v, d, o in zip(values, dense, original, strict=True):
        torch.testing.assert_close(v.detach(), d.detach())
        torch.testing.assert_close(v.detach(), o * (1 - 0.1 * 0.5))


def test_a_regex_target_must_match_the_whole_module_name():
    model = get_spiel_model(
        tiny_model(), SpielConfig(rank_equiv=1, target_modules=r"model\.layers\.0\.self_attn\.(q|v)_proj")
    )
    assert sorted(model.deltas) == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"]
    with pytest.raises(ValueError, match="selects no linear layer"):
        get_spiel_model(
            tiny_model(), SpielConfig(rank_equiv=1, target_modules=r"q_proj")
        )  # a part of names only


def test_the_fingerprint_of_a_merged_layer_is_that_of_its_base():
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    expected = weight_fingerprint(base)
    layer = SparseDeltaLinear(base, 60)
    numel = 16 * 12
    sampled = torch.linspace(0, numel - 1, FINGERPRINT_SIZE).long()
    others = torch.tensor([i for i in range(numel) if i not in set(sampled.tolist())])[
        : 60 - FINGERPRINT_SIZE
    ]
    with torch.no_grad():
        layer.indices.copy_(torch.cat([sampled, others]).sort().values.to(layer.indices.dtype))
        layer.values.copy_(torch.randn(60))  # every sampled position carries a delta
    assert weight_fingerprint(layer) == expected
    layer.merge()
    assert weight_fingerprint(layer) == pytest.approx(expected, abs=1e-6)
    assert not torch.equal(layer.base_layer.weight.view(-1)[sampled], torch.tensor(expected))  # it is merged


def test_growth_ages_survive_save_and_load(tmp_path):
    model = get_spiel_model(tiny_model(), SpielConfig(rank_equiv=1, seed=3))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in model.deltas.values():
            layer.grown_at.copy_(torch.randint(0, 500, (layer.k,), generator=g).to(layer.grown_at.dtype))
    model.save_pretrained(tmp_path / "ckpt", compact=False)  # the training form (checkpoint-N/)
    loaded = SpielModel.from_pretrained(tiny_model(), tmp_path / "ckpt")
    for name, layer in loaded.deltas.items():
        assert torch.equal(layer.grown_at.long(), model.deltas[name].grown_at.long())
        assert bool(layer.grown_at.ne(0).any())
