"""budget="global": drop and growth across all matrices, against dense references; the total is invariant,
shares move, values and optimizer state move with their positions, and a moved delta saves and resumes."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from spiel import SpielConfig, get_spiel_model
from spiel.selection import SelectionConfig, Selector, budget_shares
from spiel.selection.global_budget import global_drop, global_growth_mask


def test_global_drop_takes_the_weakest_of_all_matrices_but_each_ones_strongest():
    scores = {
        "a": torch.tensor([0.5, 0.1, 0.9]),
        "b": torch.tensor([0.2, 0.05, 0.3, 0.01]),
        "c": torch.tensor([0.0]),
    }
    got = global_drop(scores, 4)
    # all entries by score, leaving out each matrix's largest (a: 0.9, b: 0.3, c: its only one): 0.01, 0.05, 0.1, 0.2
    assert got["a"].tolist() == [1] and got["b"].tolist() == [3, 1, 0] and got["c"].tolist() == []
    assert sum(v.numel() for v in global_drop(scores, 100).values()) == 5  # never more than can go


def test_global_growth_takes_the_best_offers_of_all_matrices():
    gen = torch.Generator().manual_seed(0)
    scores = {"a": torch.rand(7, generator=gen), "b": torch.rand(5, generator=gen) * 3, "c": torch.rand(0)}
    got = global_growth_mask(scores, 6)
    everything = torch.cat([scores["a"], scores["b"]])
    threshold = everything.sort(descending=True).values[5]
    for name in ("a", "b"):
        assert torch.equal(got[name], scores[name] >= threshold)
    assert got["c"].numel() == 0


def model_and_parts(budget="global", growth="paper", seed=0):
    torch.manual_seed(seed)
    base = nn.Sequential(nn.Linear(16, 24), nn.Tanh(), nn.Linear(24, 16), nn.Tanh(), nn.Linear(16, 16))
    model = get_spiel_model(
        base,
        SpielConfig(
            num_tunable=120, reselection_steps=4, estimation_steps=2, growth=growth, budget=budget, seed=seed
        ),
    )
    opt = model.make_optimizer(lr=1e-2, weight_decay=0.1)
    return model, opt, model.make_selector(opt, total_steps=40)


def train_steps(model, opt, sel, steps, check=None):
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(8, 16, generator=gen)
        # kept alive into the next step's forward, as a training loop's `loss` variable is: its graph holds
        # each values parameter's gradient accumulator, which must not keep the size before a reselection
        loss = (model(x).pow(2).sum(0) * torch.tensor([30.0] + [1.0] * 15)).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        before = {}
        for name, layer in model.deltas.items():
            state = opt.state[layer.values]
            pairs = zip(layer.indices.tolist(), layer.values.detach().tolist(), strict=True)
            before[name] = {
                pos: (value, {k: s[slot].clone() for k, s in state.items() if k != "step"})
                for slot, (pos, value) in enumerate(pairs)
            }
        sel.step()
        if check:
            check(before)


@pytest.mark.parametrize("growth", ["paper", "normalized", "capped"])
def test_global_budget_keeps_the_total_and_moves_entries_with_their_state(growth):
    model, opt, sel = model_and_parts(growth=growth)
    total = model.num_tunable()
    start = {n: layer.k for n, layer in model.deltas.items()}

    def check(before):
        assert model.num_tunable() == total
        for name, layer in model.deltas.items():
            idx = layer.indices
            assert layer.values.numel() == idx.numel() == layer.grown_at.numel() >= 1
            assert layer.values.is_leaf and layer.values.grad_fn is None  # no graph recorded by the moves
            assert bool((idx[1:] > idx[:-1]).all()), "sorted and unique"
            state = opt.state[layer.values]
            assert all(state[k].shape == layer.values.shape for k in ("exp_avg", "exp_avg_sq"))
            for slot, pos in enumerate(idx.tolist()):
                if pos in before[name]:  # kept: value and Adam state moved with the position
                    value, old_state = before[name][pos]
                    assert float(layer.values[slot]) == value
                    assert all(torch.equal(state[k][slot], v) for k, v in old_state.items())
                else:
                    assert float(layer.values[slot]) == 0.0 and int(layer.grown_at[slot]) == sel.t

    train_steps(model, opt, sel, 30, check)
    moved = {n: layer.k for n, layer in model.deltas.items()}
    assert moved != start and sum(moved.values()) == total
    shares = budget_shares(model.deltas)
    assert shares["by_module"] == pytest.approx({n: k / total for n, k in moved.items()})


def test_global_paper_growth_follows_the_larger_gradients():
    """Two matrices, the second's gradients 10x the first's: at the first reselection (every entry replaced,
    but each matrix's strongest) the second grows its whole candidate pool and the first keeps the rest."""
    from spiel.delta import SparseDeltaLinear
    from spiel.optim import SparseAdamW

    torch.manual_seed(0)
    layers = {
        "a": SparseDeltaLinear(nn.Linear(12, 10, bias=False), 30),
        "b": SparseDeltaLinear(nn.Linear(12, 10, bias=False), 30),
    }
    opt = SparseAdamW([layer.values for layer in layers.values()], lr=0.01)
    sel = Selector(
        layers,
        opt,
        SelectionConfig(reselection_steps=10, estimation_steps=2, budget="global"),
        method="ag",
        seed=0,
        total_steps=40,
    )
    gen = torch.Generator().manual_seed(2)
    grads = {"a": [], "b": []}
    for t in range(1, 13):
        for name, scale in (("a", 1.0), ("b", 10.0)):
            g = torch.randn(10, 12, generator=gen) * scale
            grads[name].append(g)
            layers[name](torch.eye(12)).backward(g.t().contiguous())
        opt.step()
        opt.zero_grad()
        sel.step()
        if t == 2:
            # b's candidates, the top 30 |g| of its first gradient, all grow: their |mean| beats all of a's
            b_candidates = torch.topk(grads["b"][0].abs().view(-1), 30).indices
            assert set(b_candidates.tolist()) <= set(layers["b"].indices.tolist())
            assert layers["b"].k >= 30 >= layers["a"].k
        assert layers["a"].k + layers["b"].k == 60
    assert layers["b"].k > 32  # the second reselection (t = 12) moved more of the budget to b


def test_per_matrix_budget_keeps_every_k():
    model, opt, sel = model_and_parts(budget="per_matrix")
    start = {n: layer.k for n, layer in model.deltas.items()}
    train_steps(model, opt, sel, 12)
    assert {n: layer.k for n, layer in model.deltas.items()} == start


def test_a_moved_delta_saves_loads_and_resumes(tmp_path):
    from spiel import SpielModel

    model, opt, sel = model_and_parts()
    train_steps(model, opt, sel, 10)
    moved = {n: layer.k for n, layer in model.deltas.items()}
    model.save_pretrained(tmp_path / "flat", compact=False)
    model.save_pretrained(tmp_path / "compact")
    fresh, _, _ = model_and_parts()
    fresh.restore_delta(tmp_path / "flat")  # resume: each matrix takes its saved k
    assert {n: layer.k for n, layer in fresh.deltas.items()} == moved
    for name, layer in fresh.deltas.items():
        assert torch.equal(layer.indices, model.deltas[name].indices)
        assert torch.equal(layer.values, model.deltas[name].values)
        assert torch.equal(layer.grown_at, model.deltas[name].grown_at)
    fresh_sel = Selector(
        fresh.deltas,
        fresh.make_optimizer(lr=1e-2),
        SelectionConfig(reselection_steps=4, estimation_steps=2, budget="global"),
        method="ag",
        seed=0,
        total_steps=40,
    )
    fresh_sel.load_state_dict(sel.state_dict())
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(16, 24), nn.Tanh(), nn.Linear(24, 16), nn.Tanh(), nn.Linear(16, 16))
    loaded = SpielModel.from_pretrained(base, tmp_path / "compact")
    assert {n: layer.k for n, layer in loaded.deltas.items()} == moved
    x = torch.randn(3, 16)
    assert torch.allclose(loaded(x), model(x))


def test_global_budget_is_refused_where_it_cannot_work(monkeypatch):
    with pytest.raises(ValueError, match="budget must be one of .* got 'shared'"):
        SpielConfig(budget="shared")
    for method, growth in (("ag", "explore"), ("ag", "random"), ("ag", "static"), ("ma", "paper")):
        with pytest.raises(ValueError, match="budget 'global' ranks growth across matrices"):
            SpielConfig(method=method, growth=growth, budget="global")
    model, opt, _ = model_and_parts(budget="per_matrix")
    with pytest.raises(ValueError, match="budget must be one of"):
        Selector(model.deltas, opt, SelectionConfig(budget="shared"), method="ag", seed=0, total_steps=10)
    with pytest.raises(ValueError, match="needs comparable scores"):
        Selector(
            model.deltas,
            opt,
            SelectionConfig(growth="random", budget="global"),
            method="ag",
            seed=0,
            total_steps=10,
        )
    import spiel.selection.selector as selector_module

    monkeypatch.setattr(selector_module, "world_size", lambda group=None: 2)
    with pytest.raises(ValueError, match="data parallelism"):
        Selector(model.deltas, opt, SelectionConfig(budget="global"), method="ag", seed=0, total_steps=10)


def test_global_budget_with_merged_storage_trains_bit_for_bit_as_without():
    """Resizing values and indices under budget="global" while the base holds W + Δ: the layer must restore
    the base before the resize and re-merge after it, so losses and deltas equal the per-call path's."""
    runs = []
    for merged in (True, False):
        model, opt, sel = model_and_parts()
        for layer in model.deltas.values():
            layer.merged_storage = merged
        gen = torch.Generator().manual_seed(1)
        losses = []
        for _ in range(13):  # three reselections
            loss = model(torch.randn(8, 16, generator=gen)).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            sel.step()
            losses.append(loss.item())
        for layer in model.deltas.values():
            layer.restore_base()  # what every base reader (unload, merge, fingerprints, state_dict) does first
        base = {name: layer.weight.detach().clone() for name, layer in model.deltas.items()}
        runs.append(
            (
                losses,
                {n: (lay.indices.clone(), lay.values.detach().clone()) for n, lay in model.deltas.items()},
                base,
            )
        )
    (losses_a, deltas_a, base_a), (losses_b, deltas_b, base_b) = runs
    assert losses_a == losses_b
    assert {n: d[0].numel() for n, d in deltas_a.items()} != {n: 40 for n in deltas_a}  # the shares did move
    for name in deltas_a:
        assert torch.equal(deltas_a[name][0], deltas_b[name][0]) and torch.equal(
            deltas_a[name][1], deltas_b[name][1]
        )
        assert torch.equal(base_a[name], base_b[name])


def test_global_ag_growth_seeds_adam_with_each_grown_position_s_phase_statistics():
    """Two layers under one budget, SpIEL-AG with full seeding (lr 0: values stay): every position grown
    at the reselection after step 2 starts with exp_avg = mean · (1 − β1²) and exp_avg_sq = mean of squares
    · (1 − β2²) of its step gradients (two micro-batches each), computed here from the fed dense gradients."""
    from spiel.delta import SparseDeltaLinear
    from spiel.optim import SparseAdamW

    torch.manual_seed(0)
    layers = {
        "a": SparseDeltaLinear(nn.Linear(8, 6, bias=False), 10),
        "b": SparseDeltaLinear(nn.Linear(5, 7, bias=False), 8),
    }
    for layer in layers.values():
        layer.base_layer.requires_grad_(False)
        with torch.no_grad():
            layer.values.copy_(torch.linspace(0.1, 1.0, layer.k))
    betas = (0.9, 0.99)
    opt = SparseAdamW([layer.values for layer in layers.values()], lr=0.0, betas=betas)
    config = SelectionConfig(
        reselection_steps=10,
        estimation_steps=2,
        schedule="cosine",
        initial_rate=0.5,
        adam_seeding="full",
        budget="global",
    )
    sel = Selector(layers, opt, config, method="ag", seed=0, total_steps=100)
    g = torch.Generator().manual_seed(2)
    steps = {name: [] for name in layers}
    for _ in range(2):
        for name, layer in layers.items():
            micro = [torch.randn(layer.out_features, layer.in_features, generator=g) for _ in range(2)]
            steps[name].append(sum(micro).view(-1))
            for dense in micro:
                layer(torch.eye(layer.in_features)).backward(dense.t().contiguous())
        opt.step()
        opt.zero_grad()
        sel.step()
    grown = 0
    for name, layer in layers.items():
        step_grads = torch.stack(steps[name])
        state = opt.state[layer.values]
        for slot in (layer.grown_at == 2).nonzero().view(-1).tolist():
            pos = int(layer.indices[slot])
            mean, mean_sq = step_grads[:, pos].mean(), step_grads[:, pos].pow(2).mean()
            torch.testing.assert_close(state["exp_avg"][slot], mean * (1 - betas[0] ** 2))
            torch.testing.assert_close(state["exp_avg_sq"][slot], mean_sq * (1 - betas[1] ** 2))
            grown += 1
    assert grown >= 2


def test_when_fewer_grow_than_leave_the_strongest_leaving_entries_stay():
    """Four entries leave, one grows: the three with the highest drop scores, whichever matrix, stay
    (hand-computed); with as many growing as leaving nothing changes."""
    drop_scores = {"a": torch.tensor([0.1, 5.0, 0.9, 5.0, 0.5]), "b": torch.tensor([5.0, 0.7])}
    plans = {
        "a": (torch.tensor([0, 2, 4]), torch.tensor([11]), {}),
        "b": (torch.tensor([1]), torch.empty(0, dtype=torch.long), {}),
    }
    Selector._balance(plans, drop_scores)
    assert plans["a"][0].tolist() == [0] and plans["b"][0].tolist() == []
    assert plans["a"][1].tolist() == [11]
    even = {"a": (torch.tensor([0, 2]), torch.tensor([7, 8]), {})}
    Selector._balance(even, drop_scores)
    assert even["a"][0].tolist() == [0, 2]


def test_global_drop_scores_by_change_are_each_values_distance_from_its_reference(monkeypatch):
    """drop="change" (Algorithm 1) with a global budget: the scores handed to the global drop at the first
    reselection are |value − reference| per matrix (hand-computed from values set far from 0, where
    |value + reference| would order them otherwise)."""
    import spiel.selection.selector as selector_module

    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(16, 24), nn.Tanh(), nn.Linear(24, 16), nn.Tanh(), nn.Linear(16, 16))
    model = get_spiel_model(
        base,
        SpielConfig(
            num_tunable=120, reselection_steps=4, estimation_steps=2, budget="global", drop="change", seed=0
        ),
    )
    opt = model.make_optimizer(lr=1e-2, weight_decay=0.0)
    sel = model.make_selector(opt, total_steps=40)
    seen = {}

    def recording_drop(scores, n):
        seen.update({name: s.clone() for name, s in scores.items()})
        return global_drop(scores, n)

    monkeypatch.setattr(selector_module, "global_drop", recording_drop)
    for group in opt.param_groups:
        group["lr"] = 0.0  # the last step leaves the values as set below
    g = torch.Generator().manual_seed(1)
    for _ in range(8):  # up to the first reselection; before each step, values set far from their references
        expected = {}
        with torch.no_grad():
            for name, layer in model.deltas.items():
                sel.references[name] = torch.full((layer.k,), 10.0)
                change = torch.rand(layer.k, generator=g) * 16 - 8
                layer.values.copy_(10.0 + change)
                expected[name] = change.abs()
        train_steps(model, opt, sel, 1)
        if seen:
            break
    assert set(seen) == set(expected)
    for name in expected:
        torch.testing.assert_close(seen[name], expected[name], rtol=1e-6, atol=1e-5)
