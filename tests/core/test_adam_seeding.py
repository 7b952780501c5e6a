"""SpIEL-AG's Adam seeding of grown entries (method.adam_seeding) and Adam's eps placement
(method.eps_placement), against hand computations in plain torch and torch.optim.AdamW."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from spiel import SpielConfig, get_spiel_model
from spiel.optim import SparseAdamW
from spiel.selection import SelectionConfig, Selector
from spiel.selection.grow import top_candidates
from tests.core.test_growth_rules import feed_dense_gradient, scaled_gradient, spread_layer
from tests.core.test_model import tiny_llama

LR, WD, BETAS, EPS = 0.01, 0.5, (0.9, 0.999), 1e-8


def grow_once(seeding: str, estimation_steps: int, extra_steps: int = 0):
    """Estimation over ``estimation_steps`` steps, the first reselection (every slot replaced), then
    ``extra_steps`` more steps. Returns the layer, optimizer, every step's dense gradient and the positions
    grown at the reselection that were not active before (their state is the seed)."""
    layer = spread_layer(20, 30, per_row=2)
    before = set(layer.indices.tolist())
    opt = SparseAdamW([layer.values], lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    sel = Selector(
        {"l": layer},
        opt,
        SelectionConfig(reselection_steps=20, estimation_steps=estimation_steps, adam_seeding=seeding),
        method="ag",
        seed=0,
        total_steps=100,
    )
    grads, new = [], None
    for t in range(estimation_steps + extra_steps):
        grads.append(scaled_gradient(20, 30, seed=10 + t))
        feed_dense_gradient(layer, grads[-1])
        opt.step()
        opt.zero_grad()
        sel.step()
        if t + 1 == estimation_steps:
            new = torch.tensor(sorted(set(layer.indices.tolist()) - before))
    return layer, opt, grads, new


def seeded_state(layer, opt, positions):
    slots = torch.searchsorted(layer.indices.long(), positions)
    state = opt.state[layer.values]
    return state["exp_avg"][slots], state["exp_avg_sq"][slots], opt.ages(layer.values)[slots]


def test_full_seeding_is_the_phase_statistics_bit_for_bit():
    """The phase's mean / mean square, pre-multiplied by (1 − β^γ), in the arithmetic order of the sums."""
    layer, opt, (g0, g1), new = grow_once("full", 2)
    candidates = top_candidates(g0, 40)
    at = torch.searchsorted(candidates, new)
    first, second = g0.reshape(-1)[candidates], g1.reshape(-1)[candidates]
    grad_sum = torch.zeros_like(first) + first + second
    grad_sq_sum = torch.zeros_like(first) + first * first + second * second
    m, v, age = seeded_state(layer, opt, new)
    assert torch.equal(m, (grad_sum / 2)[at] * (1 - BETAS[0] ** 2))
    assert torch.equal(v, (grad_sq_sum / 2)[at] * (1 - BETAS[1] ** 2))
    assert bool((age == 2).all()) and new.numel() >= 30


def test_the_shipped_default_is_a_fresh_adam_state():
    """docs/quality.md's decision: none beat full on both models by more than the seed spread."""
    assert SpielConfig().adam_seeding == "none" and SelectionConfig().adam_seeding == "none"


@pytest.mark.parametrize("steps", [1, 3])
def test_released_seeding_is_the_released_code_at_128_accumulation_steps(steps):
    """The released code at the paper's scale, written out: each of the 128 micro-batches of a step carries
    its step's gradient divided by 128; sums and squares (here in float64), the sample counter in bf16 (starting at 1
    on the first micro-batch), mean = sum / counter, age = counter / 128, moments × (1 − β^age)."""
    layer, opt, grads, new = grow_once("released", steps)
    candidates = top_candidates(grads[0], 40)
    at = torch.searchsorted(candidates, new)
    total, total_sq, counter = 0.0, 0.0, None
    for g in grads:
        micro = g.reshape(-1)[candidates][at].double() / 128
        for _ in range(128):
            total, total_sq = total + micro, total_sq + micro * micro
            counter = torch.ones((), dtype=torch.bfloat16) if counter is None else counter + 1
    assert float(counter) == min(128 * steps, 256)  # 3 × 128 micro-batches, but bf16 stops at 256
    age = int(float(counter) / 128)
    m, v, ages = seeded_state(layer, opt, new)
    torch.testing.assert_close(
        m.double(), total / float(counter) * (1 - BETAS[0] ** age), rtol=1e-5, atol=1e-9
    )
    torch.testing.assert_close(
        v.double(), total_sq / float(counter) * (1 - BETAS[1] ** age), rtol=1e-5, atol=0
    )
    assert ages.tolist() == [age] * new.numel() and age == min(steps, 2)
    if steps == 3:  # the saturated counter: m = 3·mean / 256, v = 3·mean_sq / (128·256) at age 2
        stack = torch.stack([g.reshape(-1)[candidates][at] for g in grads])
        torch.testing.assert_close(m, 3 * stack.mean(0) / 256 * (1 - 0.9**2), rtol=1e-5, atol=0)
        torch.testing.assert_close(
            v, 3 * (stack**2).mean(0) / (128 * 256) * (1 - 0.999**2), rtol=1e-5, atol=0
        )


def test_no_seeding_gives_a_grown_entry_torch_adamw_fresh_trajectory():
    """After the reselection, each newly grown entry (value 0) moves as a new parameter under
    torch.optim.AdamW fed the same gradients (to 1e-4: SparseAdamW's bias correction 1 − β2^age is taken in
    fp32, 5e-5 off at β2 = 0.999, age 1; torch's in float64)."""
    extra = 6
    layer, opt, grads, new = grow_once("none", 2, extra_steps=extra)
    m, v, ages = seeded_state(layer, opt, new)
    assert ages.tolist() == [extra] * new.numel()
    reference = torch.zeros(new.numel(), requires_grad=True)
    torch_opt = torch.optim.AdamW([reference], lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    for g in grads[2:]:
        reference.grad = g.reshape(-1)[new].clone()
        torch_opt.step()
    slots = torch.searchsorted(layer.indices.long(), new)
    torch.testing.assert_close(layer.values.detach()[slots], reference.detach(), rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(m, torch_opt.state[reference]["exp_avg"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(v, torch_opt.state[reference]["exp_avg_sq"], rtol=1e-5, atol=1e-6)


def test_explore_takes_the_seeding_for_its_scored_share():
    layer = spread_layer(20, 30, per_row=2)
    before = set(layer.indices.tolist())
    opt = SparseAdamW([layer.values], lr=LR)
    sel = Selector(
        {"l": layer},
        opt,
        SelectionConfig(
            reselection_steps=10,
            estimation_steps=2,
            growth="explore",
            explore_share=0.25,
            adam_seeding="none",
        ),
        method="ag",
        seed=0,
        total_steps=50,
    )
    for t in range(2):
        feed_dense_gradient(layer, scaled_gradient(20, 30, seed=t))
        opt.step()
        opt.zero_grad()
        sel.step()
    new = torch.tensor(sorted(set(layer.indices.tolist()) - before))
    m, v, ages = seeded_state(layer, opt, new)
    assert new.numel() >= 30 and not m.any() and not v.any() and not ages.any()


@pytest.mark.parametrize("age", [1, 3])
def test_hf_eps_placement_is_eps_before_the_bias_correction(age):
    """HF's AdamW step: p −= lr · (m / (1 − β1^t)) · √(1 − β2^t) / (√v + eps), decay first as ours."""
    b1, b2, lr, eps, wd = 0.9, 0.999, 0.1, 1e-2, 0.5  # a large eps, so its placement shows
    start = torch.tensor([0.3, -0.2, 0.1])
    grad = torch.tensor([1e-3, -2e-2, 3e-4])
    results = {}
    for placement in ("hf", "torch"):
        p = start.clone().requires_grad_()
        opt = SparseAdamW([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, eps_placement=placement)
        opt.reset_slots(p, torch.arange(3), age=age - 1)
        p.grad = grad.clone()
        opt.step()
        results[placement] = p.detach()
    m, v = (1 - b1) * grad, (1 - b2) * grad**2
    hf = start * (1 - lr * wd) - lr * (m / (1 - b1**age)) * (1 - b2**age) ** 0.5 / (v.sqrt() + eps)
    plain = start * (1 - lr * wd) - lr * (m / (1 - b1**age)) / ((v / (1 - b2**age)).sqrt() + eps)
    torch.testing.assert_close(results["hf"], hf, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(results["torch"], plain, rtol=1e-5, atol=1e-8)
    assert not torch.allclose(hf, plain, rtol=1e-3, atol=0)


def test_the_knobs_reach_the_rule_and_the_optimizer_and_bad_values_are_refused():
    model = get_spiel_model(
        tiny_llama(), SpielConfig(rank_equiv=2, adam_seeding="released", eps_placement="hf")
    )
    opt = model.make_optimizer(1e-3)
    assert opt.param_groups[0]["eps_placement"] == "hf"
    selector = model.make_selector(opt, total_steps=40)
    assert selector.rule.config.adam_seeding == "released" and selector.rule.head_start == 2  # γ 5, capped
    assert model.make_optimizer(1e-3, eps_placement="torch").param_groups[0]["eps_placement"] == "torch"
    with pytest.raises(ValueError, match="eps_placement must be one of"):
        SparseAdamW([nn.Parameter(torch.zeros(2))], eps_placement="before")
    with pytest.raises(ValueError, match="adam_seeding must be one of"):
        Selector(
            {"l": spread_layer(4, 6, 1)},
            SparseAdamW([torch.zeros(4, requires_grad=True)]),
            SelectionConfig(adam_seeding="half"),
            method="ag",
            seed=0,
            total_steps=10,
        )
