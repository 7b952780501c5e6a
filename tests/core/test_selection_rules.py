"""Selection rules checked step by step against definitions: drop="change" (the paper's Algorithm 1),
a second SpIEL-AG estimation phase using only its own statistics, and SpIEL-MA's optimizer state for
grown slots."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from spiel import SpielConfig, get_spiel_model
from spiel.delta import SparseDeltaLinear
from spiel.optim import SparseAdamW, SparseSM3
from spiel.selection import SelectionConfig, Selector
from spiel.selection.drop import drop_order


def feed_dense_gradient(layer, dense):
    """One micro-batch whose dL/dW is exactly ``dense`` [out, in]: one-hot inputs, chosen output grads."""
    x = torch.eye(layer.in_features)
    layer(x).backward(dense.t().contiguous())


def test_drop_change_takes_the_smallest_change_since_the_reference():
    values = torch.tensor([1.0, 0.5, -0.2, 2.0, -1.0])
    reference = torch.tensor([0.9, 0.0, -0.2, 0.0, -1.5])
    # |change| = 0.1, 0.5, 0.0, 2.0, 0.5 -> weakest first: slot 2, slot 0, then slots 1 and 4 (tie: lower first)
    assert drop_order(values, 4, "change", reference).tolist() == [2, 0, 1, 4]
    assert drop_order(values, 2, "magnitude").tolist() == [2, 1]


def test_drop_change_compares_with_the_values_at_the_last_reselection():
    """SpIEL-MA with drop="change": at the second reselection the dropped slots are those whose value moved
    least since the first reselection (not since the start)."""
    torch.manual_seed(0)
    layer = SparseDeltaLinear(nn.Linear(12, 10, bias=False), 30)
    layer.base_layer.requires_grad_(False)
    opt = SparseSM3([layer.values], {layer.values: layer}, lr=0.05)
    sel = Selector(
        {"l": layer},
        opt,
        SelectionConfig(
            reselection_steps=6, estimation_steps=2, schedule="cosine", initial_rate=0.5, drop="change"
        ),
        method="ma",
        seed=0,
        total_steps=40,
    )
    g = torch.Generator().manual_seed(1)
    after_first = None
    for t in range(1, 9):
        if t == 8:  # the second reselection (t = 2 + 6) follows this step
            before_positions = layer.indices.tolist()
        feed_dense_gradient(layer, torch.randn(10, 12, generator=g))
        opt.step()
        opt.zero_grad()
        if t == 8:
            moved = (layer.values.detach() - after_first).abs()
            n = math.floor(0.5 / 2 * (1 + math.cos(math.pi * 8 / 40)) * 30)
            weakest = torch.sort(moved, stable=True).indices[:n]
            expected_dropped = {before_positions[i] for i in weakest.tolist()}
        sel.step()
        if t == 2:
            after_first = layer.values.detach().clone()
            assert torch.equal(sel.references["l"], after_first)
    assert expected_dropped and not expected_dropped & set(
        layer.indices.tolist()
    )  # MA never regrows in the same round
    kept = set(before_positions) - expected_dropped
    assert kept <= set(layer.indices.tolist())
    assert torch.equal(sel.references["l"], layer.values.detach())


def test_the_second_ag_estimation_phase_uses_only_its_own_statistics():
    torch.manual_seed(0)
    out_f, in_f, k, gamma, period = 6, 8, 10, 3, 10
    layer = SparseDeltaLinear(nn.Linear(in_f, out_f, bias=False), k)
    layer.base_layer.requires_grad_(False)
    with torch.no_grad():
        layer.values.copy_(torch.linspace(0.1, 1.0, k))
    opt = SparseAdamW([layer.values], lr=0.0, betas=(0.9, 0.99))  # lr 0: values stay put
    sel = Selector(
        {"l": layer},
        opt,
        SelectionConfig(
            reselection_steps=period,
            estimation_steps=gamma,
            schedule="cosine",
            initial_rate=0.5,
            adam_seeding="full",
        ),
        method="ag",
        seed=0,
        total_steps=100,
    )
    g = torch.Generator().manual_seed(1)
    second_phase = []
    for t in range(1, 14):  # reselections after steps 3 and 13; the second phase is steps 11..13
        micro = [torch.randn(out_f, in_f, generator=g) for _ in range(2)]  # every step has gradients
        if t == 11:
            indices, values = layer.indices.clone(), layer.values.detach().clone()
        if t >= 11:
            second_phase.append(micro)
        for dense in micro:
            feed_dense_gradient(layer, dense)
        opt.step()
        opt.zero_grad()
        sel.step()

    # From the definitions, with nothing of the first phase or of steps 4..10:
    candidates = second_phase[0][0].abs().view(-1).topk(k).indices
    step_grads = torch.stack([sum(step) for step in second_phase]).view(gamma, -1)[:, candidates]
    mean, mean_sq = step_grads.mean(0), (step_grads**2).mean(0)
    n = math.floor(0.5 / 2 * (1 + math.cos(math.pi * 13 / 100)) * k)
    dropped_slots = torch.sort(values.abs(), stable=True).indices[:n]
    keep = torch.ones(k, dtype=torch.bool)
    keep[dropped_slots] = False
    staying = set(indices[keep].tolist())
    eligible = [i for i in range(k) if int(candidates[i]) not in staying]
    grown = sorted(eligible, key=lambda i: -abs(float(mean[i])))[:n]
    got = layer.indices.tolist()
    assert got == sorted(staying | {int(candidates[i]) for i in grown})
    state = opt.state[layer.values]
    dropped = set(indices[dropped_slots].tolist())
    for i in grown:
        slot = got.index(int(candidates[i]))
        if int(candidates[i]) in dropped:
            continue  # dropped and regrown: keeps its slot state
        assert layer.grown_at[slot] == 13 and opt.ages(layer.values)[slot] == gamma
        torch.testing.assert_close(state["exp_avg"][slot], mean[i] * (1 - 0.9**gamma))
        torch.testing.assert_close(state["exp_avg_sq"][slot], mean_sq[i] * (1 - 0.99**gamma))


def test_ma_grown_slots_start_with_zero_momentum_and_keep_the_accumulators():
    torch.manual_seed(0)
    model = get_spiel_model(
        nn.Sequential(nn.Linear(16, 24), nn.Linear(24, 16)),
        SpielConfig(method="ma", num_tunable=120, reselection_steps=4, estimation_steps=2),
    )
    opt = model.make_optimizer(lr=1e-2, momentum=0.9)
    sel = model.make_selector(opt, total_steps=20)
    g = torch.Generator().manual_seed(3)
    grown_checked = 0
    for _ in range(20):
        (model(torch.randn(8, 16, generator=g)).pow(2).mean()).backward()
        opt.step()
        opt.zero_grad()
        before = {}
        for name, layer in model.deltas.items():
            state = opt.state[layer.values]
            before[name] = (
                {p: s for s, p in enumerate(layer.indices.tolist())},
                state["momentum_buffer"].clone(),
                state["row_acc"].clone(),
                state["col_acc"].clone(),
            )
        sel.step()
        for name, layer in model.deltas.items():
            slot_of, momentum, row_acc, col_acc = before[name]
            state = opt.state[layer.values]
            assert torch.equal(state["row_acc"], row_acc) and torch.equal(state["col_acc"], col_acc)
            for slot, pos in enumerate(layer.indices.tolist()):
                if pos in slot_of:
                    assert state["momentum_buffer"][slot] == momentum[slot_of[pos]]
                else:
                    assert state["momentum_buffer"][slot] == 0 and layer.grown_at[slot] == sel.t
                    grown_checked += 1
    assert grown_checked > 0 and bool(
        torch.cat([s["momentum_buffer"] for s in opt.state.values()]).ne(0).any()
    )


def test_ag_paper_growth_over_three_reselections_and_two_layers_follows_the_definitions():
    """Two layers of different shapes and budgets, reselections after steps 2, 7 and 12 (γ = 2, period 5):
    at each one, per layer, the n weakest |values| go and the best |mean step gradient| of the phase's
    candidates (top-k |gradient| of its first micro-batch) come in, new ones at 0 and dropped-and-regrown
    ones with their old value. A plain-Python replay of the definitions, nothing carried between phases."""
    torch.manual_seed(0)
    gamma, period, total, rate = 2, 5, 40, 0.6
    shapes = {"a": (6, 8, 10), "b": (5, 12, 7)}  # out, in, k
    layers = {}
    for name, (out_f, in_f, k) in shapes.items():
        layers[name] = SparseDeltaLinear(nn.Linear(in_f, out_f, bias=False), k)
        layers[name].base_layer.requires_grad_(False)
        with torch.no_grad():
            layers[name].values.copy_(
                torch.linspace(0.1, 1.0, k).flip(0) if name == "b" else torch.linspace(0.1, 1.0, k)
            )
    opt = SparseAdamW([layer.values for layer in layers.values()], lr=0.0)  # lr 0: values stay put
    config = SelectionConfig(
        reselection_steps=period, estimation_steps=gamma, schedule="cosine", initial_rate=rate
    )
    sel = Selector(layers, opt, config, method="ag", seed=0, total_steps=total)
    support = {
        name: dict(zip(layer.indices.tolist(), layer.values.detach().tolist(), strict=True))
        for name, layer in layers.items()
    }
    g = torch.Generator().manual_seed(5)
    phase = {name: [] for name in layers}
    for t in range(1, 13):
        for name, layer in layers.items():
            out_f, in_f, _ = shapes[name]
            micro = [torch.randn(out_f, in_f, generator=g) for _ in range(2)]
            if (gamma - t) % period < gamma:  # the γ steps up to a reselection: its estimation phase
                phase[name].append(micro)
            for dense in micro:
                feed_dense_gradient(layer, dense)
        opt.step()
        opt.zero_grad()
        sel.step()
        if t not in (2, 7, 12):
            for name, layer in layers.items():  # no reselection: the support does not move
                assert layer.indices.tolist() == sorted(support[name])
            continue
        for name, layer in layers.items():
            k = shapes[name][2]
            assert len(phase[name]) == gamma, (t, name)
            n = math.floor(rate / 2 * (1 + math.cos(math.pi * t / total)) * k)
            positions = sorted(support[name])
            magnitudes = [abs(support[name][p]) for p in positions]
            dropped = [positions[i] for i in sorted(range(k), key=lambda i: magnitudes[i])[:n]]
            staying = [p for p in positions if p not in dropped]
            first = phase[name][0][0].abs().view(-1).tolist()
            candidates = sorted(range(len(first)), key=lambda p: -first[p])[:k]
            steps = [sum(step).view(-1).tolist() for step in phase[name]]
            mean = {p: sum(s[p] for s in steps) / gamma for p in candidates}
            grown = sorted((p for p in candidates if p not in staying), key=lambda p: -abs(mean[p]))[:n]
            support[name] = {
                **{p: support[name][p] for p in staying},
                **{p: support[name].get(p, 0.0) for p in grown},  # regrown keeps its value, new ones 0
            }
            assert layer.indices.tolist() == sorted(support[name]), (t, name)
            got = dict(zip(layer.indices.tolist(), layer.values.detach().tolist(), strict=True))
            assert got == pytest.approx(support[name]), (t, name)
            assert {p for p, v in got.items() if v == 0.0} >= set(grown) - set(dropped)
            phase[name] = []


@pytest.mark.parametrize(
    "knobs,field",
    [
        (dict(reselection_steps=1, estimation_steps=1), "estimation_steps"),  # γ < R: R = 1 leaves no γ
        (dict(reselection_steps=0), "reselection_steps"),
        (dict(reselection_steps=2, estimation_steps=1), None),
        (dict(reselection_steps=5, estimation_steps=4), None),
        (dict(reselection_steps=5, estimation_steps=5), "estimation_steps"),
        (dict(estimation_steps=0), "estimation_steps"),
        (dict(initial_rate=0.0), None),
        (dict(initial_rate=1.0), None),
        (dict(initial_rate=-0.01), "initial_rate"),
        (dict(initial_rate=1.01), "initial_rate"),
        (dict(growth_cap=1.0), None),
        (dict(growth_cap=0.99), "growth_cap"),
        (dict(explore_share=0.0), None),
        (dict(explore_share=1.0), None),
        (dict(explore_share=-0.01), "explore_share"),
        (dict(explore_share=1.01), "explore_share"),
        *[(dict(schedule=v), None) for v in ("linear", "cosine")],
        (dict(schedule="step"), "schedule"),
        *[(dict(drop=v), None) for v in ("magnitude", "change")],
        (dict(drop="random"), "drop"),
        *[(dict(growth=v), None) for v in ("paper", "normalized", "capped", "explore", "random", "static")],
        (dict(growth="greedy"), "growth"),
        *[(dict(adam_seeding=v), None) for v in ("full", "released", "none")],
        (dict(adam_seeding="half"), "adam_seeding"),
        *[(dict(eps_placement=v), None) for v in ("torch", "hf")],
        (dict(eps_placement="keras"), "eps_placement"),
        *[(dict(budget=v), None) for v in ("per_matrix", "global")],
        (dict(budget="local"), "budget"),
    ],
)
def test_every_selection_knob_takes_its_limits_and_refuses_one_past_them(knobs, field):
    """Each bound exactly is accepted, one step past it refused with the field named (the error carries it)."""
    from spiel.selection.config import SpielConfigError

    if field is None:
        config = SelectionConfig(**knobs)
        assert all(getattr(config, k) == v for k, v in knobs.items())
        return
    with pytest.raises(SpielConfigError) as refused:
        SelectionConfig(**knobs)
    assert refused.value.field == field and str(refused.value).startswith(f"SpielConfig: {field} must")


def test_a_config_error_keeps_its_field_across_processes_and_the_knobs_list_themselves():
    import dataclasses
    import pickle

    from spiel.selection.config import SpielConfigError, knob

    for field, text in (("growth", "SpielConfig: growth must be x"), (None, "SpielConfig: must be x")):
        e = pickle.loads(pickle.dumps(SpielConfigError(field, "must be x")))  # DDP and submitit pickle it
        assert (e.field, e.problem, str(e)) == (field, "must be x", text)
    config = SelectionConfig(reselection_steps=7, estimation_steps=3, growth="capped")
    values = config.selection_values()
    assert values["reselection_steps"] == 7 and values["growth"] == "capped"
    assert set(values) == {f.name for f in dataclasses.fields(SelectionConfig)}

    @dataclasses.dataclass
    class Two:
        a: list = knob([1], "a list")

    first, second = Two(), Two()
    first.a.append(2)
    assert second.a == [1]  # each instance its own copy of a list default
    assert dataclasses.fields(Two)[0].metadata["help"] == "a list"


def test_a_schedule_needs_at_least_one_step():
    from spiel.selection.schedule import ReselectionSchedule

    config = SelectionConfig(reselection_steps=4, estimation_steps=2)
    assert ReselectionSchedule.of(1, config).total_steps == 1  # the limit itself
    for total in (0, -3):
        with pytest.raises(ValueError, match=f"total_steps must be >= 1, got {total}"):
            ReselectionSchedule.of(total, config)
