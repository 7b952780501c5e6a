"""What a sparse delta may hold (spiel.delta.bounds): finite values up to ±1e4 exactly, one float step past
refused with the count, the first position and its value; casts that keep every value."""

from __future__ import annotations

import math

import pytest
import torch

from spiel.delta.bounds import MAX_DELTA_MAGNITUDE, delta_value_problem, lossless_into


def test_values_up_to_the_bound_exactly_are_a_delta():
    assert MAX_DELTA_MAGNITUDE == 1e4
    for values in [torch.empty(0), torch.zeros(3), torch.tensor([1e4, -1e4, 0.5]), torch.tensor([-1e4])]:
        assert delta_value_problem(values) is None, values


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_one_float_step_past_the_bound_is_refused_naming_the_first(sign):
    past = math.nextafter(1e4, math.inf)
    values = torch.tensor([0.0, 1e4, sign * past, 2e4, -3.0], dtype=torch.float64)
    problem = delta_value_problem(values)
    assert problem == (
        f"2 value(s) of 5 beyond ±10000 (first at position 2: {sign * past:.4g}), which no fine-tuning run "
        "of this base produces (see spiel.delta.bounds)"
    )


def test_non_finite_values_are_counted_before_the_magnitude():
    values = torch.tensor([1.0, 2e4, float("nan"), float("-inf"), 3.0])
    assert delta_value_problem(values) == ("2 non-finite value(s) of 5 (NaN/Inf; first at position 2: nan)")
    assert delta_value_problem(torch.tensor([float("inf")])).startswith(
        "1 non-finite value(s) of 1 (NaN/Inf;"
    )


def test_only_the_same_dtype_or_a_half_type_into_float32_is_lossless():
    half = (torch.bfloat16, torch.float16)
    assert all(lossless_into(d, d) for d in (torch.float32, torch.float64, *half))
    assert all(lossless_into(d, torch.float32) for d in half)
    for src, dst in [
        (torch.float32, torch.bfloat16),
        (torch.float32, torch.float16),
        (torch.float64, torch.float32),
        (torch.bfloat16, torch.float16),
        (torch.float16, torch.bfloat16),
        (torch.float32, torch.float64),  # a wider target: not what a checkpoint's delta_dtype asks for
    ]:
        assert not lossless_into(src, dst), (src, dst)
