"""SpIEL-AG's growth variants (normalized, capped, explore, random, static) against small dense references,
and the growth rules' seams: the method table, the knobs' guards, resume of older selector states."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from spiel import SpielConfig
from spiel.delta import SparseDeltaLinear
from spiel.optim import SparseAdamW, SparseSM3
from spiel.selection import SelectionConfig, Selector
from spiel.selection.grow import (
    admit_under_caps,
    capped_top_candidates,
    line_caps,
    normalization_factors,
    random_inactive,
    top_candidates,
)


def feed_dense_gradient(layer, dense):
    """One micro-batch whose dL/dW is exactly ``dense`` [out, in]: one-hot inputs, chosen output grads."""
    x = torch.eye(layer.in_features)
    layer(x).backward(dense.t().contiguous())


def scaled_gradient(out_f, in_f, seed, hot_rows=(0, 1), factor=20.0):
    """A gradient whose ``hot_rows`` are ``factor`` times larger than the others (as gate/up projections')."""
    g = torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(seed))
    g[list(hot_rows)] *= factor
    return g


def spread_layer(out_f, in_f, per_row):
    """A layer whose initial support is ``per_row`` entries in every row (columns spread out)."""
    layer = SparseDeltaLinear(nn.Linear(in_f, out_f, bias=False), out_f * per_row)
    layer.base_layer.requires_grad_(False)
    positions = [
        r * in_f + (r * 7 + j * (in_f // per_row)) % in_f for r in range(out_f) for j in range(per_row)
    ]
    layer.indices.copy_(torch.tensor(sorted(positions), dtype=layer.indices.dtype))
    return layer


# -- the scores, against dense computations -------------------------------------------------------------------
def test_normalized_scores_equal_the_dense_formula():
    g = scaled_gradient(13, 9, seed=0)
    g[4] = 0  # an all-zero row scores 0, not NaN
    row_factor, col_factor = normalization_factors(g)
    rms = g.pow(2).mean().sqrt()
    row_rms, col_rms = g.pow(2).mean(1).sqrt(), g.pow(2).mean(0).sqrt()
    dense = torch.where(row_rms[:, None] > 0, g.abs() * rms / (row_rms[:, None] * col_rms[None, :]), 0.0)
    got = g.abs() * row_factor[:, None] * col_factor[None, :]
    assert torch.allclose(got, dense, rtol=1e-5) and not got.isnan().any()
    for num, chunk in ((5, 1 << 20), (40, 9), (117, 20)):
        expected = torch.topk(dense.view(-1), num).indices.sort().values
        assert torch.equal(
            top_candidates(g, num, chunk_elements=chunk, row_factor=row_factor, col_factor=col_factor),
            expected,
        )


@pytest.mark.parametrize("rows_per_chunk", [1, 2, 3, 13])
def test_normalization_factors_by_row_chunks_are_the_whole_matrix_ones(monkeypatch, rows_per_chunk):
    """The row and column sums of squares are gathered chunk by chunk (a partial last chunk included): the
    factors are those of the dense formula whatever the chunk size."""
    from spiel.selection import grow

    g = scaled_gradient(13, 9, seed=3)
    g[6] = 0
    monkeypatch.setattr(grow, "CHUNK_ELEMENTS", 9 * rows_per_chunk)
    row_factor, col_factor = normalization_factors(g)
    rms = g.pow(2).mean().sqrt()
    row_rms, col_rms = g.pow(2).mean(1).sqrt(), g.pow(2).mean(0).sqrt()
    dense = torch.where(row_rms[:, None] > 0, g.abs() * rms / (row_rms[:, None] * col_rms[None, :]), 0.0)
    torch.testing.assert_close(
        g.abs() * row_factor[:, None] * col_factor[None, :], dense, rtol=1e-5, atol=1e-6
    )


def test_normalized_scores_leave_the_gradient_alone_and_take_every_row_alike():
    g = scaled_gradient(16, 12, seed=1, hot_rows=(0, 1, 2), factor=50.0)
    before = g.clone()
    row_factor, col_factor = normalization_factors(g)
    assert torch.equal(g, before)
    # a row scaled 50x scores as if it were not: the same ranks as the unscaled gradient's rows
    plain = scaled_gradient(16, 12, seed=1, factor=1.0)
    plain_rows, _ = normalization_factors(plain)
    scores = g.abs() * row_factor[:, None]
    assert torch.allclose(
        scores / scores.sum(1, keepdim=True),
        plain.abs() * plain_rows[:, None] / (plain.abs() * plain_rows[:, None]).sum(1, keepdim=True),
        rtol=1e-5,
    )
    assert torch.allclose(scores.pow(2).mean(1), scores.pow(2).mean(1)[5].expand(16), rtol=1e-4)


def _greedy_caps(positions, in_f, row_counts, col_counts, row_cap, col_cap):
    """The documented rule in plain Python: rows take their best up to their room, then columns."""
    taken_row, after_rows = dict(), []
    for r in [p // in_f for p in positions]:
        taken_row[r] = taken_row.get(r, 0) + 1
        after_rows.append(taken_row[r] <= row_cap - int(row_counts[r]))
    taken_col, result = dict(), []
    for p, ok in zip(positions, after_rows, strict=True):
        if ok:
            c = p % in_f
            taken_col[c] = taken_col.get(c, 0) + 1
            ok = taken_col[c] <= col_cap - int(col_counts[c])
        result.append(ok)
    return result


def test_admission_under_caps_matches_the_plain_rule():
    gen = torch.Generator().manual_seed(2)
    for _ in range(20):
        positions = torch.randperm(7 * 6, generator=gen)[:30]
        row_counts = torch.randint(0, 3, (7,), generator=gen)
        col_counts = torch.randint(0, 3, (6,), generator=gen)
        got = admit_under_caps(positions, 6, row_counts, col_counts, 3, 4)
        assert got.tolist() == _greedy_caps(positions.tolist(), 6, row_counts, col_counts, 3, 4)


@pytest.mark.parametrize("chunk", [45, 1 << 20], ids=["3-row-chunks", "one-chunk"])
def test_capped_candidates_are_the_best_under_the_caps(monkeypatch, chunk):
    from spiel.selection import grow

    monkeypatch.setattr(grow, "CHUNK_ELEMENTS", chunk)
    g = scaled_gradient(20, 15, seed=3)
    row_cap, col_cap = line_caps(40, 20, 15, 2.0)
    assert (row_cap, col_cap) == (4, 6)
    got = capped_top_candidates(g, 40, row_cap, col_cap)
    order = torch.sort(g.abs().view(-1), descending=True, stable=True).indices
    admitted = _greedy_caps(order.tolist(), 15, torch.zeros(20), torch.zeros(15), row_cap, col_cap)
    expected = (
        torch.tensor([p for p, ok in zip(order.tolist(), admitted, strict=True) if ok][:40]).sort().values
    )
    assert torch.equal(got, expected)
    rows, cols = got // 15, got % 15
    assert torch.bincount(rows).max() <= row_cap and torch.bincount(cols).max() <= col_cap
    # caps too tight for num: the offered (each row's best) that the caps refused come next, best first, then
    # the best of all the rest; still num distinct positions
    magnitude = g.abs().view(-1)
    offered = sorted((r * 15 + int(g[r].abs().argmax()) for r in range(20)), key=lambda p: -magnitude[p])
    admitted = _greedy_caps(offered, 15, torch.zeros(20), torch.zeros(15), 1, 1)
    for num in (18, 100):
        expected = [p for p, ok in zip(offered, admitted, strict=True) if ok][:num]
        expected += [p for p, ok in zip(offered, admitted, strict=True) if not ok][: num - len(expected)]
        rest = sorted((p for p in range(300) if p not in expected), key=lambda p: -magnitude[p])
        expected += rest[: num - len(expected)]
        tight = capped_top_candidates(g, num, 1, 1)
        assert tight.tolist() == sorted(expected)


@pytest.mark.parametrize("numel,excluded,n", [(1000, 50, 30), (100, 60, 30), (100, 60, 50), (10, 10, 3)])
def test_random_inactive_draws_distinct_free_positions(numel, excluded, n):
    gen = torch.Generator().manual_seed(4)
    taken = torch.randperm(numel, generator=gen)[:excluded].sort().values
    got = random_inactive(taken, numel, n, torch.Generator().manual_seed(5))
    assert got.numel() == min(n, numel - excluded) and got.unique().numel() == got.numel()
    assert not torch.isin(got, taken).any() and bool(((got >= 0) & (got < numel)).all())
    assert torch.equal(got, random_inactive(taken, numel, n, torch.Generator().manual_seed(5)))


def test_random_inactive_rejection_rounds_top_up_to_exactly_n():
    """Half the positions taken and n just under free/4: the first round of 2n + 16 draws often keeps fewer
    than n, so later rounds draw only for what is missing, and still end with n distinct free positions."""
    taken = torch.arange(0, 10000, 2)
    for seed in range(12):
        got = random_inactive(taken, 10000, 1200, torch.Generator().manual_seed(seed))
        assert got.numel() == 1200 and got.unique().numel() == 1200 and bool((got % 2 == 1).all())


@pytest.mark.parametrize("numel,excluded,n", [(16, 3, 4), (16, 4, 3), (40, 8, 8)])  # free <= 4n, free = 4n
def test_random_inactive_lists_the_free_positions_when_they_are_few(numel, excluded, n):
    """free <= 4n: a random permutation of the free positions, drawn from the generator (no rejection)."""
    taken = torch.arange(excluded)
    got = random_inactive(taken, numel, n, torch.Generator().manual_seed(9))
    pool = torch.arange(excluded, numel)
    assert torch.equal(
        got, pool[torch.randperm(pool.numel(), generator=torch.Generator().manual_seed(9))[:n]]
    )


def test_random_inactive_is_uniform_over_the_free_positions():
    taken = torch.arange(0, 200, 2)  # the even positions of 200
    counts = torch.zeros(200)
    for seed in range(400):
        counts[random_inactive(taken, 200, 10, torch.Generator().manual_seed(seed))] += 1
    odd = counts[1::2]
    assert counts[0::2].sum() == 0 and odd.sum() == 4000
    assert odd.min() > 20 and odd.max() < 65  # 40 expected each (binomial sd ~6)


# -- the selector with each variant ----------------------------------------------------------------------------
def run_first_reselection(growth, layer=None, seed=0, **options):
    """Two-step estimation then the first reselection (which replaces every slot), on scaled gradients."""
    layer = layer or spread_layer(20, 30, per_row=2)
    opt = SparseAdamW([layer.values], lr=0.01)
    sel = Selector(
        {"l": layer},
        opt,
        SelectionConfig(
            reselection_steps=10, estimation_steps=2, growth=growth, **{"adam_seeding": "full", **options}
        ),
        method="ag",
        seed=seed,
        total_steps=50,
    )
    grads = [scaled_gradient(20, 30, seed=10 + t) for t in range(2)]
    for g in grads:
        feed_dense_gradient(layer, g)
        opt.step()
        opt.zero_grad()
        sel.step()
    return layer, opt, sel, grads


def row_counts(layer):
    return torch.bincount(layer.indices.long() // layer.in_features, minlength=layer.out_features)


def test_paper_rule_concentrates_and_capped_honours_the_caps():
    paper, *_ = run_first_reselection("paper")
    assert row_counts(paper)[:2].sum() >= 30  # 20x-larger rows take most of the 40 entries
    capped, *_ = run_first_reselection("capped", growth_cap=1.5)
    row_cap, col_cap = line_caps(40, 20, 30, 1.5)
    assert row_counts(capped).max() <= row_cap
    assert torch.bincount(capped.indices.long() % 30, minlength=30).max() <= col_cap


def test_normalized_growth_spreads_over_rows_and_seeds_the_phase_statistics():
    layer, opt, sel, grads = run_first_reselection("normalized")
    assert row_counts(layer)[:2].sum() <= 12  # no longer swamped by the two hot rows
    # the grown entries are the top-k of |mean grad| x the first gradient's factors, among its candidates
    row_factor, col_factor = normalization_factors(grads[0])
    candidates = top_candidates(grads[0], 40, row_factor=row_factor, col_factor=col_factor)
    mean = (grads[0] + grads[1]).view(-1)[candidates] / 2
    factors = (row_factor[:, None] * col_factor[None, :]).reshape(-1)[candidates]
    expected = candidates[torch.sort((mean * factors).abs(), descending=True, stable=True).indices[:40]]
    assert torch.equal(layer.indices.long(), expected.sort().values)
    # newly grown slots: Adam seeded with the phase's unbiased mean, exp_avg / (1 - β1^age) == mean gradient
    # (a position dropped and regrown keeps its slot and state)
    grown = layer.grown_at == 2
    assert grown.sum() >= 30
    state = opt.state[layer.values]
    full_mean = ((grads[0] + grads[1]) / 2).reshape(-1)[layer.indices.long()]
    assert torch.allclose(state["exp_avg"][grown] / (1 - 0.9**2), full_mean[grown], rtol=1e-5)
    assert torch.equal(opt.ages(layer.values), torch.full((40,), 2))


def test_explore_grows_its_share_at_random_with_a_fresh_adam_state():
    layer, opt, sel, grads = run_first_reselection("explore", explore_share=0.25, seed=7)
    n_random = int(0.25 * 40)
    candidates = set(torch.topk(grads[0].abs().view(-1), 40).indices.tolist())
    outside = [slot for slot, p in enumerate(layer.indices.tolist()) if p not in candidates]
    assert len(outside) >= n_random  # at least the random share lies outside the paper's candidates
    ages = opt.ages(layer.values)
    state = opt.state[layer.values]
    fresh = (ages == 0).nonzero().view(-1)
    assert fresh.numel() == n_random
    assert not state["exp_avg"][fresh].any() and not state["exp_avg_sq"][fresh].any()
    assert set(fresh.tolist()) <= set(outside)
    assert int((ages == 2).sum()) == 40 - n_random


def test_random_growth_is_seeded_fresh_and_reproducible():
    layers = [run_first_reselection("random", seed=s)[0] for s in (1, 1, 2)]
    assert torch.equal(layers[0].indices, layers[1].indices) and not torch.equal(
        layers[0].indices, layers[2].indices
    )
    layer, opt, sel, _ = run_first_reselection("random", seed=1)
    assert torch.equal(opt.ages(layer.values), torch.zeros(40, dtype=torch.long))
    assert not opt.state[layer.values]["exp_avg"].any() and "born" not in opt.state[layer.values]


@pytest.mark.parametrize("seed", [0, 1, 2**62, 2**80])
def test_growth_draws_are_fixed_by_seed_step_and_layer_for_any_seed(seed):
    """Every rank draws what every other rank draws; another step or layer draws anew; any whole seed works
    (a run's seed can be large: the generator takes at most 64 bits)."""
    from spiel.selection.rules.base import growth_generator

    def draws(t, ordinal):
        return torch.randint(1 << 30, (8,), generator=growth_generator(seed, t, ordinal, "cpu")).tolist()

    assert draws(5, 1) == draws(5, 1)
    assert len({tuple(draws(t, i)) for t in (5, 6) for i in (0, 1)}) == 4
    # the generator's seed is the documented mix, so a run resumed by a later version draws what it drew
    for t, ordinal in [(5, 1), (6, 0), (10**6, 7)]:
        expected = (seed * 1_000_003 + t * 7_919 + ordinal) % (1 << 63)
        assert growth_generator(seed, t, ordinal, "cpu").initial_seed() == expected


def test_normalized_growth_scores_the_mean_gradient_times_its_factors():
    """NormalizedGradient: |mean · row_factor · col_factor| at each candidate (the factors kept as the phase's
    scale), so a candidate in a row with a small gradient scale can outrank a larger raw gradient."""
    from spiel.selection.rules.accumulated_gradient import NormalizedGradient, Phase

    phase = Phase()
    phase.scale = torch.tensor([0.5, 4.0, 1.0])
    mean = torch.tensor([2.0, -0.5, -3.0])
    scores = NormalizedGradient.scores(None, phase, mean)
    assert scores.tolist() == [1.0, 2.0, 3.0]


def test_static_keeps_the_initial_positions_and_trains():
    layer = spread_layer(20, 30, per_row=2)
    start = layer.indices.clone()
    opt = SparseAdamW([layer.values], lr=0.01)
    sel = Selector(
        {"l": layer},
        opt,
        SelectionConfig(reselection_steps=4, estimation_steps=2, growth="static"),
        method="ag",
        seed=0,
        total_steps=30,
    )
    for t in range(30):
        feed_dense_gradient(layer, scaled_gradient(20, 30, seed=t))
        opt.step()
        opt.zero_grad()
        sel.step()
        assert layer._take_probe() is None  # no estimation probes
    assert torch.equal(layer.indices, start) and layer.values.abs().sum() > 0 and not sel.reselects
    assert torch.equal(opt.ages(layer.values), torch.full((40,), 30))


# -- the knobs' guards and the method table ---------------------------------------------------------------------
def test_growth_knobs_are_checked_where_they_enter():
    with pytest.raises(ValueError, match=r"growth must be one of \('paper',\) for method 'ma', got 'capped'"):
        SpielConfig(method="ma", growth="capped")
    with pytest.raises(ValueError, match="growth must be one of .* got 'rigl'"):
        SpielConfig(growth="rigl")
    with pytest.raises(ValueError, match="growth_cap must be >= 1"):
        SpielConfig(growth="capped", growth_cap=0.5)
    with pytest.raises(ValueError, match=r"explore_share must be in \[0, 1\]"):
        SpielConfig(growth="explore", explore_share=1.5)
    layer = SparseDeltaLinear(nn.Linear(4, 4), 3)
    with pytest.raises(ValueError, match="growth must be one of"):
        Selector(
            {"l": layer},
            SparseSM3([layer.values], {layer.values: layer}),
            SelectionConfig(growth="random"),
            method="ma",
            seed=0,
            total_steps=10,
        )
    with pytest.raises(ValueError, match="growth_cap"):
        Selector(
            {"l": layer},
            SparseAdamW([layer.values]),
            SelectionConfig(growth_cap=0),
            method="ag",
            seed=0,
            total_steps=10,
        )
    with pytest.raises(ValueError, match="explore_share"):
        Selector(
            {"l": layer},
            SparseAdamW([layer.values]),
            SelectionConfig(explore_share=-1),
            method="ag",
            seed=0,
            total_steps=10,
        )


def test_growth_knob_errors_name_the_cli_key():
    from spiel.training.config.schema import ConfigError, SpielMethodConfig

    with pytest.raises(ConfigError, match="method.growth: must be one of") as error:
        SpielMethodConfig(name="ma", lr=1e-3, growth="normalized")
    assert error.value.key == "method.growth"
    with pytest.raises(ConfigError, match="method.explore_share: must be in"):
        SpielMethodConfig(name="ag", lr=1e-3, explore_share=-0.1)
    with pytest.raises(ConfigError, match="method.budget: 'global' ranks growth across matrices"):
        SpielMethodConfig(name="ag", lr=1e-3, growth="explore", budget="global")


def test_the_method_table_pairs_each_method_with_its_optimizer():
    from spiel import get_spiel_model
    from spiel.selection import method_spec

    for method, optimizer in (("ag", SparseAdamW), ("ma", SparseSM3)):
        assert method_spec(method).optimizer is optimizer
        model = get_spiel_model(nn.Sequential(nn.Linear(8, 8)), SpielConfig(method=method, num_tunable=10))
        assert type(model.make_optimizer(lr=1e-3)) is optimizer


def test_selector_state_without_growth_loads_as_the_paper_rule_and_other_rules_are_refused():
    layer, opt, sel, _ = run_first_reselection("paper")
    state = sel.state_dict()
    assert state["growth"] == "paper"
    del state["growth"]  # as saved before growth rules existed
    other = Selector(
        {"l": layer},
        opt,
        SelectionConfig(reselection_steps=10, estimation_steps=2),
        method="ag",
        seed=0,
        total_steps=50,
    )
    other.load_state_dict(state)
    assert other.t == 2
    capped = Selector(
        {"l": layer},
        opt,
        SelectionConfig(reselection_steps=10, estimation_steps=2, growth="capped"),
        method="ag",
        seed=0,
        total_steps=50,
    )
    with pytest.raises(ValueError, match="growth=paper .* growth=capped"):
        capped.load_state_dict(state)
    with pytest.raises(ValueError, match="growth=capped .* growth=paper"):  # and the other way round
        other.load_state_dict({**state, "growth": "capped"})
    with pytest.raises(ValueError, match="budget=global .* budget=per_matrix"):
        other.load_state_dict({**state, "budget": "global"})
    with pytest.raises(ValueError, match="method=ma .* method=ag"):
        other.load_state_dict({**state, "method": "ma"})
    with pytest.raises(ValueError, match="'reselection_steps': 9"):
        other.load_state_dict({**state, "schedule": {**state["schedule"], "reselection_steps": 9}})


def test_normalized_phase_state_resumes_mid_phase():
    """A normalized run saved mid-phase and resumed grows what the straight run grows."""

    def make():
        layer = spread_layer(20, 30, per_row=2)
        opt = SparseAdamW([layer.values], lr=0.01)
        sel = Selector(
            {"l": layer},
            opt,
            SelectionConfig(reselection_steps=10, estimation_steps=3, growth="normalized"),
            method="ag",
            seed=0,
            total_steps=50,
        )
        return layer, opt, sel

    def train(layer, opt, sel, steps):
        for t in steps:
            feed_dense_gradient(layer, scaled_gradient(20, 30, seed=t))
            opt.step()
            opt.zero_grad()
            sel.step()

    straight = make()
    train(*straight, range(3))
    resumed = make()
    train(*resumed, range(1))
    saved = resumed[2].state_dict()
    assert "scale" in saved["phases"]["l"]
    again = make()
    again[0].load_state_dict(resumed[0].state_dict())
    again[1].load_state_dict(resumed[1].state_dict())
    again[2].load_state_dict(saved)
    train(*again, range(1, 3))
    assert torch.equal(again[0].indices, straight[0].indices)
    assert math.isclose(float(again[0].values.sum()), float(straight[0].values.sum()), rel_tol=1e-6)


# -- the support reports ---------------------------------------------------------------------------------------
def test_support_concentration_counts_against_a_dense_mask():
    from spiel.selection.concentration import model_concentration, support_concentration

    gen = torch.Generator().manual_seed(6)
    mask = torch.zeros(30, 20, dtype=torch.bool)
    mask[:3] = torch.rand(3, 20, generator=gen) < 0.9  # three rows (10%) hold most entries
    mask[3:10, :5] = torch.rand(7, 5, generator=gen) < 0.3
    indices = mask.view(-1).nonzero().view(-1)
    got = support_concentration(indices.int(), 30, 20)
    row_counts, col_counts = mask.sum(1), mask.sum(0)
    k = int(mask.sum())
    assert math.isclose(got["top10_rows_share"], int(row_counts.sort(descending=True).values[:3].sum()) / k)
    assert math.isclose(got["top10_cols_share"], int(col_counts.sort(descending=True).values[:2].sum()) / k)
    assert math.isclose(got["empty_rows_share"], int((row_counts == 0).sum()) / 30)
    assert math.isclose(got["empty_cols_share"], int((col_counts == 0).sum()) / 20)
    paper, *_ = run_first_reselection("paper")
    spread, *_ = run_first_reselection("capped", growth_cap=1.5)
    assert model_concentration({"l": paper})["l"]["top10_rows_share"] > 0.7
    assert model_concentration({"l": spread})["mean"]["top10_rows_share"] < 0.35


def test_budget_shares_sum_per_layer_and_projection():
    from spiel.selection.concentration import budget_shares

    def layer(k):
        return SparseDeltaLinear(nn.Linear(10, 10), k)

    layers = {
        "model.layers.0.self_attn.q_proj": layer(10),
        "model.layers.0.mlp.up_proj": layer(30),
        "model.layers.1.self_attn.q_proj": layer(20),
        "model.layers.1.mlp.up_proj": layer(40),
    }
    shares = budget_shares(layers)
    assert shares["by_layer"] == pytest.approx({"0": 0.4, "1": 0.6})
    assert shares["by_projection"] == pytest.approx({"q_proj": 0.3, "up_proj": 0.7})
    assert sum(shares["by_module"].values()) == pytest.approx(1.0)


def test_default_chunks_are_2_20_scores_or_2_24_on_cuda_or_8n():
    """The chunk of scores materialized at once: max(2**20, 8·n), on CUDA max(2**24, 8·n); another device (meta,
    like mps or xpu a name that sorts after "cuda") takes the CPU's."""
    from spiel.selection import grow

    for device in ("cpu", "meta"):
        assert grow._default_chunk(1000, torch.device(device)) == 1 << 20
        assert grow._default_chunk(1 << 18, torch.device(device)) == 8 << 18
    assert grow._default_chunk(1000, torch.device("cuda")) == 1 << 24
    assert grow._default_chunk(1 << 22, torch.device("cuda")) == 8 << 22


def test_rows_per_chunk_are_the_whole_rows_that_fit_and_at_least_one():
    from spiel.selection.grow import rows_per_chunk

    assert [rows_per_chunk(e, 15) for e in (45, 44, 30, 16, 15, 14, 1)] == [3, 2, 2, 1, 1, 1, 1]
    assert rows_per_chunk(1 << 20, 4096) == 256 and rows_per_chunk(1 << 20, 1 << 21) == 1


def test_normalized_candidates_carry_their_row_times_column_factor():
    """The phase's scale at each candidate is row_factor[r] · col_factor[c] of the first gradient's factors."""
    from types import SimpleNamespace

    from spiel.selection.grow import normalization_factors
    from spiel.selection.rules.accumulated_gradient import NormalizedGradient

    g = scaled_gradient(20, 15, seed=5)
    candidates, scale = NormalizedGradient.candidates(None, SimpleNamespace(k=30, in_features=15), g)
    row_factor, col_factor = normalization_factors(g)
    rows, cols = candidates.long() // 15, candidates.long() % 15
    torch.testing.assert_close(scale, row_factor[rows] * col_factor[cols])
    assert candidates.numel() == 30
