"""SparseAdamW and SparseSM3 against references: torch.optim.AdamW and a hand-written dense SM3."""

import math

import pytest
import torch

from spiel.optim import SparseAdamW, SparseSM3
from tests.helpers.linked_ages import linked_after_one_step


def quadratic_grads(steps, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(k, generator=g) for _ in range(steps)]


@pytest.mark.parametrize("weight_decay", [0.0, 3.0])
def test_adamw_equals_torch_adamw_when_all_ages_match(weight_decay):
    start = torch.randn(50)
    ours, theirs = start.clone().requires_grad_(), start.clone().requires_grad_()
    opt_ours = SparseAdamW([ours], lr=1e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=weight_decay)
    opt_theirs = torch.optim.AdamW([theirs], lr=1e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=weight_decay)
    for grad in quadratic_grads(20, 50):
        for p, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            p.grad = grad + p.detach()  # a gradient that depends on the parameter
            opt.step()
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(opt_ours.state[ours]["exp_avg"], opt_theirs.state[theirs]["exp_avg"])
    assert bool((opt_ours.ages(ours) == 20).all())


def test_adamw_per_index_age_gives_the_hand_computed_bias_correction():
    b1, b2, lr, eps = 0.9, 0.99, 0.1, 1e-8
    p = torch.zeros(3, requires_grad=True)
    opt = SparseAdamW([p], lr=lr, betas=(b1, b2), eps=eps)
    m0, v0 = torch.tensor([0.5, -0.2, 0.0]), torch.tensor([0.3, 0.1, 0.0])
    opt.reset_slots(p, torch.arange(3), exp_avg=m0, exp_avg_sq=v0, age=torch.tensor([4, 1, 0]))
    grad = torch.tensor([1.0, 2.0, -3.0])
    p.grad = grad.clone()
    opt.step()
    expected = []
    for i, age in enumerate([5, 2, 1]):
        m = b1 * m0[i] + (1 - b1) * grad[i]
        v = b2 * v0[i] + (1 - b2) * grad[i] ** 2
        expected.append(-lr * (m / (1 - b1**age)) / ((v / (1 - b2**age)).sqrt() + eps))
    torch.testing.assert_close(p.detach(), torch.stack(expected))
    assert opt.ages(p).tolist() == [5, 2, 1]


@pytest.mark.parametrize("foreach", [True, False])
def test_adamw_bias_correction_of_old_slots_in_several_vectors(foreach):
    """Ages far past the update count (reset with an age) in one vector and fresh slots in another: each slot's
    update is the hand-computed one (bias corrections in float64), whichever vector holds the oldest slot."""
    b1, b2, lr, eps = 0.9, 0.999, 0.1, 1e-8
    params = [torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)]
    opt = SparseAdamW(params, lr=lr, betas=(b1, b2), eps=eps, foreach=foreach)
    m0, v0 = torch.tensor([0.5, -0.2, 0.1]), torch.tensor([0.3, 0.1, 0.2])
    opt.reset_slots(params[0], torch.arange(3), exp_avg=m0, exp_avg_sq=v0, age=torch.tensor([2999, 0, 19999]))
    grads = [torch.tensor([1.0, 2.0, -3.0]), torch.tensor([0.5, -1.0])]
    for p, grad in zip(params, grads, strict=True):
        p.grad = grad.clone()
    opt.step()
    for p, grad, m_start, v_start, ages in (
        (params[0], grads[0], m0.double(), v0.double(), [3000, 1, 20000]),
        (
            params[1],
            grads[1],
            torch.zeros(2, dtype=torch.float64),
            torch.zeros(2, dtype=torch.float64),
            [1, 1],
        ),
    ):
        age = torch.tensor(ages, dtype=torch.float64)
        m = b1 * m_start + (1 - b1) * grad.double()
        v = b2 * v_start + (1 - b2) * grad.double() ** 2
        expected = -lr * (m / (1 - b1**age)) / ((v / (1 - b2**age)).sqrt() + eps)
        torch.testing.assert_close(p.detach(), expected.float(), rtol=1e-6, atol=1e-7)
        assert opt.ages(p).tolist() == ages


def test_adamw_keeps_fp32_moments_for_bf16_values_through_save_and_load():
    p = torch.zeros(6, dtype=torch.bfloat16, requires_grad=True)
    opt = SparseAdamW([p], lr=1e-3)
    for grad in quadratic_grads(3, 6):
        p.grad = (grad * 1e-3).to(torch.bfloat16)
        opt.step()
    state = opt.state[p]
    assert state["exp_avg"].dtype == torch.float32 and state["exp_avg_sq"].dtype == torch.float32
    assert state["born"].dtype == torch.int32 and "age" not in state  # 4 bytes per slot, no int64 counter
    saved = {k: v.clone() for k, v in state.items()}
    fresh = SparseAdamW([p], lr=1e-3)
    fresh.load_state_dict(opt.state_dict())
    for key, value in saved.items():
        assert fresh.state[p][key].dtype == value.dtype
        assert torch.equal(fresh.state[p][key], value), key  # bit-exact, not rounded through bf16


def test_reset_and_permute_slots_move_state_with_slots():
    p = torch.zeros(4, requires_grad=True)
    opt = SparseAdamW([p], lr=1e-3)
    p.grad = torch.tensor([1.0, 2.0, 3.0, 4.0])
    opt.step()
    before = opt.state[p]["exp_avg"].clone()
    opt.permute_slots(p, torch.tensor([3, 0, 2, 1]))
    assert opt.state[p]["exp_avg"].tolist() == before[[3, 0, 2, 1]].tolist()
    opt.reset_slots(p, torch.tensor([1]))
    assert opt.state[p]["exp_avg"][1] == 0 and opt.ages(p)[1] == 0
    with pytest.raises(KeyError, match="no per-slot state"):
        opt.reset_slots(p, torch.tensor([0]), momentum=1.0)


class Layout:
    def __init__(self, indices, shape):
        self.indices, self.dense_shape = indices, shape


def dense_sm3_reference(start, indices, shape, grads, lr, eps, weight_decay, momentum):
    """SM3 written entry by entry over the dense [out, in] matrix (no scatter tricks)."""
    out_features, in_features = shape
    row = [0.0] * out_features
    col = [0.0] * in_features
    values = start.tolist()
    buf = [0.0] * len(values)
    for grad in grads:
        u = []
        for j, flat in enumerate(indices.tolist()):
            r, c = divmod(flat, in_features)
            u.append(min(row[r], col[c]) + grad[j].item() ** 2)
        for j, flat in enumerate(indices.tolist()):
            r, c = divmod(flat, in_features)
            row[r] = max(row[r], u[j])
            col[c] = max(col[c], u[j])
        for j in range(len(values)):
            step = grad[j].item() / (u[j] + eps) ** 0.5
            if momentum:
                buf[j] = momentum * buf[j] + (1 - momentum) * step
                step = buf[j]
            values[j] = values[j] * (1 - lr * weight_decay) - lr * step
    return torch.tensor(values), torch.tensor(row), torch.tensor(col)


@pytest.mark.parametrize("momentum", [0.0, 0.3, 0.9])  # 0.3: below 0.5, where 1 % m is not 1 - m
def test_sm3_matches_a_dense_reference(momentum):
    shape = (5, 7)
    indices = torch.tensor([0, 3, 6, 8, 9, 15, 20, 21, 27, 33, 34], dtype=torch.int32)
    start = torch.randn(indices.numel())
    grads = quadratic_grads(6, indices.numel(), seed=2)
    p = start.clone().requires_grad_()
    opt = SparseSM3([p], {p: Layout(indices, shape)}, lr=0.05, eps=1e-8, weight_decay=0.5, momentum=momentum)
    for grad in grads:
        p.grad = grad.clone()
        opt.step()
    values, row, col = dense_sm3_reference(start, indices, shape, grads, 0.05, 1e-8, 0.5, momentum)
    torch.testing.assert_close(p.detach(), values, rtol=1e-5, atol=1e-6)
    row_acc, col_acc = opt.accumulators(p)
    torch.testing.assert_close(row_acc, row)
    torch.testing.assert_close(col_acc, col)


def test_sm3_accumulators_keep_their_maximum_when_the_positions_move():
    """Hand-computed, 2x2 with k = 2: step 1 at (0,0), (1,1) with gradients 2, 0 gives row = col = [4, 0];
    regrown to (0,1), (1,0) with gradients 1, 1, each u = min(4, 0) + 1 = 1, so row and column 0 keep 4
    (scatter-max with the accumulator itself: nothing in row or column 0 reaches it any more)."""
    layout = Layout(torch.tensor([0, 3]), (2, 2))
    p = torch.zeros(2, requires_grad=True)
    opt = SparseSM3([p], {p: layout}, lr=0.1)
    p.grad = torch.tensor([2.0, 0.0])
    opt.step()
    assert [t.tolist() for t in opt.accumulators(p)] == [[4.0, 0.0], [4.0, 0.0]]
    layout.indices = torch.tensor([1, 2])
    p.grad = torch.tensor([1.0, 1.0])
    opt.step()
    assert [t.tolist() for t in opt.accumulators(p)] == [[4.0, 1.0], [4.0, 1.0]]
    torch.testing.assert_close(p.detach(), torch.tensor([-0.1 - 0.1, -0.1]))  # 2/sqrt(4), then 1/sqrt(1)


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_sm3_keeps_a_per_slot_buffer_only_with_momentum(momentum):
    """Momentum 0: the state is the two accumulators (no k-sized buffer in memory or in the saved state)."""
    p = torch.zeros(3, requires_grad=True)
    opt = SparseSM3([p], {p: Layout(torch.tensor([0, 4, 5]), (2, 3))}, lr=0.1, momentum=momentum)
    p.grad = torch.ones(3)
    opt.step()
    expected = {"row_acc", "col_acc"} | ({"momentum_buffer"} if momentum else set())
    assert set(opt.state[p]) == expected


def test_sm3_requires_a_layout_and_validates_arguments():
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="no layout"):
        SparseSM3([p], {}, lr=0.1)
    with pytest.raises(ValueError, match="momentum"):
        SparseSM3([p], {p: Layout(torch.arange(3), (1, 3))}, momentum=1.5)
    with pytest.raises(ValueError, match="betas"):
        SparseAdamW([p], betas=(1.0, 0.9))
    for betas in ((0.9, 1.0), (-0.1, 0.9), (0.9, -0.1), (1.5, 0.9), (0.9, 1.5)):  # past each end of [0, 1)
        with pytest.raises(ValueError, match="betas"):
            SparseAdamW([p], betas=betas)
    SparseAdamW([p], betas=(0.0, 0.0))  # the boundaries themselves, as torch.optim.AdamW allows
    torch.optim.AdamW([p], betas=(0.0, 0.0))


def adamw_reference_with_ages(start, grads, seeds, lr, betas, eps, wd):
    """Adam entry by entry, each slot with its own (seeded) age: the definition the derived ages must meet."""
    b1, b2 = betas
    values = start.tolist()
    m, v, age = [0.0] * len(values), [0.0] * len(values), [0] * len(values)
    for step, grad in enumerate(grads):
        for slot, (m0, v0, a0) in seeds.get(step, {}).items():
            m[slot], v[slot], age[slot] = m0, v0, a0
        for j, g in enumerate(grad.tolist()):
            age[j] += 1
            m[j] = b1 * m[j] + (1 - b1) * g
            v[j] = b2 * v[j] + (1 - b2) * g * g
            upd = (m[j] / (1 - b1 ** age[j])) / ((v[j] / (1 - b2 ** age[j])) ** 0.5 + eps)
            values[j] = values[j] * (1 - lr * wd) - lr * upd
    return torch.tensor(values)


def test_linked_ages_follow_grown_at_and_match_per_slot_ages():
    """Ages derived from the layer's grown_at (the selector's link) give the same updates as stored
    per-slot ages, across reseeds, a save/load and a permutation."""
    k, head_start = 6, 3
    start = torch.randn(k, generator=torch.Generator().manual_seed(4))
    grads = quadratic_grads(9, k, seed=5)
    p = start.clone().requires_grad_()
    grown_at = torch.zeros(k, dtype=torch.int32)
    opt = SparseAdamW([p], lr=1e-2, betas=(0.8, 0.9), eps=1e-8, weight_decay=0.5)
    opt.link_ages(p, grown_at, head_start)
    seeds = {}
    for step, grad in enumerate(grads):
        if step in (3, 6):  # reseed two slots at update count `step`, as a reselection does
            slots = torch.tensor([1, 4]) if step == 3 else torch.tensor([4, 5])
            m0, v0 = torch.tensor([0.1, -0.2]), torch.tensor([0.04, 0.09])
            grown_at[slots] = step
            opt.reset_slots(p, slots, exp_avg=m0, exp_avg_sq=v0, age=head_start)
            seeds[step] = {
                int(s): (float(a), float(b), head_start) for s, a, b in zip(slots, m0, v0, strict=True)
            }
        if step == 5:  # resume from a state dict into a fresh optimizer linked to the same grown_at
            fresh = SparseAdamW([p], lr=1e-2, betas=(0.8, 0.9), eps=1e-8, weight_decay=0.5)
            fresh.link_ages(p, grown_at, head_start)
            fresh.load_state_dict(opt.state_dict())
            assert "born" not in fresh.state[p]  # nothing per slot but the moments
            opt = fresh
        p.grad = grad.clone()
        opt.step()
    expected = adamw_reference_with_ages(start, grads, seeds, 1e-2, (0.8, 0.9), 1e-8, 0.5)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-7)
    assert opt.ages(p).tolist() == [9, 6 + head_start, 9, 9, 3 + head_start, 3 + head_start]


def test_linked_ages_refuse_a_different_seed_and_unlink_exactly():
    p, grown_at, opt = linked_after_one_step(head_start=5)
    with pytest.raises(ValueError, match="seed every grown slot at age 5"):
        opt.reset_slots(p, torch.tensor([0]), age=2)
    grown_at[1] = 1
    opt.reset_slots(p, torch.tensor([1]), age=5)
    assert opt.ages(p).tolist() == [1, 5, 1]
    opt.unlink_ages(p)
    assert opt.linked_head_start(p) is None and opt.ages(p).tolist() == [1, 5, 1]
    opt.reset_slots(p, torch.tensor([0]), age=2)  # per-slot ages now take any seed
    assert opt.ages(p).tolist() == [2, 5, 1]


def test_linked_ages_take_one_seed_age_as_a_number_or_a_one_element_tensor_only():
    """Linked ages seed every grown slot alike: a per-slot tensor of ages is refused with the message even
    when each of its ages is the head start (one element, or a 0-d tensor, is that one age)."""
    p, grown_at, opt = linked_after_one_step(head_start=5)
    for age in (5, torch.tensor(5), torch.tensor([5])):
        opt.reset_slots(p, torch.tensor([0]), age=age)
    for age in (torch.tensor([5, 5]), torch.tensor([], dtype=torch.long), torch.tensor([4]), 6):
        with pytest.raises(ValueError, match="linked ages seed every grown slot at age 5"):
            opt.reset_slots(p, torch.tensor([0, 1]), age=age)


def test_linked_ages_refuse_a_negative_head_start():
    p = torch.zeros(3, requires_grad=True)
    opt = SparseAdamW([p], lr=1e-3)
    with pytest.raises(ValueError, match="head_start is the age grown slots start at: must be >= 0, got -1"):
        opt.link_ages(p, torch.zeros(3, dtype=torch.int32), -1)
    assert not opt.is_linked(p)
    opt.link_ages(p, torch.zeros(3, dtype=torch.int32), 0)  # the limit itself
    assert opt.linked_head_start(p) == 0


def test_unlinked_state_without_ages_is_refused():
    p = torch.zeros(3, requires_grad=True)
    opt = SparseAdamW([p], lr=1e-3)
    opt.link_ages(p, torch.zeros(3, dtype=torch.int32), 1)
    p.grad = torch.ones(3)
    opt.step()
    plain = SparseAdamW([p], lr=1e-3)  # not linked: a linked run's state has no ages for it
    plain.load_state_dict(opt.state_dict())
    p.grad = torch.ones(3)
    with pytest.raises(RuntimeError, match="no per-slot ages and no link"):
        plain.step()


def test_state_saved_with_int64_ages_loads_to_the_same_ages():
    """Optimizer states written before ages were derived (per-slot int64 ``age``, no ``step``)."""
    p = torch.zeros(3, requires_grad=True)
    opt = SparseAdamW([p], lr=1e-3)
    old = {
        "state": {
            0: {
                "exp_avg": torch.tensor([0.1, 0.2, 0.3]),
                "exp_avg_sq": torch.tensor([1.0, 2.0, 3.0]),
                "age": torch.tensor([7, 0, 2], dtype=torch.int64),
            }
        },
        "param_groups": [{**opt.param_groups[0], "params": [0]}],
    }
    opt.load_state_dict(old)
    assert opt.ages(p).tolist() == [7, 0, 2]
    p.grad = torch.ones(3)
    opt.step()
    assert opt.ages(p).tolist() == [8, 1, 3]


def test_two_values_vectors_already_take_the_multi_tensor_step():
    """From two vectors of one device and dtype on, one multi-tensor step (its result is the per-vector one,
    bit for bit: see the next test); mixed dtypes go vector by vector."""
    ours = [torch.zeros(5, requires_grad=True), torch.zeros(3, requires_grad=True)]
    opt = SparseAdamW(ours, lr=1e-2)

    def one_by_one(*args):
        raise AssertionError("the multi-tensor step went parameter by parameter")

    opt._update = one_by_one
    for p in ours:
        p.grad = torch.ones_like(p)
    opt.step()
    mixed = [torch.zeros(5, requires_grad=True), torch.zeros(3, dtype=torch.bfloat16, requires_grad=True)]
    opt = SparseAdamW(mixed, lr=1e-2)
    opt._update_all = one_by_one
    for p in mixed:
        p.grad = torch.ones_like(p)
    opt.step()
    assert all(
        torch.allclose(p.float(), torch.full_like(p.float(), -1e-2), rtol=1e-2) for p in (*ours, *mixed)
    )


@pytest.mark.parametrize(
    "dtype,eps_placement", [(torch.float32, "torch"), (torch.bfloat16, "torch"), (torch.float32, "hf")]
)
def test_adamw_over_all_values_at_once_equals_torch_adamw_per_tensor(dtype, eps_placement):
    """The multi-tensor step over several values vectors: torch.optim.AdamW's update on every vector, with
    slots of different ages (a reset slot restarts its bias correction) as the one-by-one step gives."""
    g = torch.Generator().manual_seed(1)
    starts = [torch.randn(n, generator=g).to(dtype) for n in (40, 7, 40)]
    ours = [s.clone().requires_grad_() for s in starts]
    alone = [s.clone().requires_grad_() for s in starts]
    theirs = [s.float().clone().requires_grad_() for s in starts]
    kw = dict(lr=1e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.5)
    opt_ours = SparseAdamW(ours, **kw, eps_placement=eps_placement)
    opt_alone = SparseAdamW(alone, **kw, eps_placement=eps_placement, foreach=False)
    opt_theirs = torch.optim.AdamW(theirs, **kw, foreach=False)

    def one_by_one(*args):
        raise AssertionError("the multi-tensor step went parameter by parameter")

    opt_ours._update = one_by_one
    for step in range(12):
        grads = [torch.randn(p.numel(), generator=g) for p in ours]
        for params, opt in ((ours, opt_ours), (alone, opt_alone), (theirs, opt_theirs)):
            for p, grad in zip(params, grads, strict=True):
                p.grad = grad.to(p.dtype)
            opt.step()
        if step == 5:  # slot 3 of the first vector restarts (age 0) in ours: its Adam starts over
            for opt, p in ((opt_ours, ours[0]), (opt_alone, alone[0])):
                opt.reset_slots(p, torch.tensor([3]))
    for a, b in zip(ours, alone, strict=True):
        assert torch.equal(a, b)
        assert torch.equal(opt_ours.state[a]["exp_avg_sq"], opt_alone.state[b]["exp_avg_sq"])
    if dtype == torch.float32 and eps_placement == "torch":
        for a, b in zip(ours[1:], theirs[1:], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        keep = torch.arange(40) != 3
        torch.testing.assert_close(ours[0][keep], theirs[0][keep], rtol=1e-6, atol=1e-7)
        assert int(opt_ours.ages(ours[0])[3]) == 6 and int(opt_ours.ages(ours[0])[0]) == 12


def test_decay_problem_at_lr_times_decay_one_and_just_below():
    """lr·λ exactly 1 is refused with every number of the message (hand-computed), one float step below
    passes, for both optimizers."""
    from spiel.optim.slot_state import decay_problem

    assert decay_problem(0.25, 4.0) == (
        "lr·weight_decay = 0.25·4 = 1 >= 1: decoupled decay multiplies every value by (1 − lr·weight_decay) = 0 "
        "each step, flipping or exploding them; use weight_decay < 1/lr = 4"
    )
    assert "= -4 each step" in decay_problem(0.5, 10.0) and "< 1/lr = 2" in decay_problem(0.5, 10.0)
    below = math.nextafter(4.0, 0.0)
    assert decay_problem(0.25, below) is None and decay_problem(0.0, 1e30) is None
    p = torch.nn.Parameter(torch.zeros(4))
    SparseAdamW([p], lr=0.25, weight_decay=below)
    for make in (SparseAdamW, lambda *a, **kw: SparseSM3(a[0], {}, **kw)):
        with pytest.raises(ValueError, match=r"^lr·weight_decay = 0\.25·4 = 1 >= 1"):
            make([p], lr=0.25, weight_decay=4.0)


def test_each_values_vector_finds_its_own_param_group():
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)
    opt = SparseAdamW([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 5e-2, "betas": (0.5, 0.6)}])
    assert (
        opt.group_of(a)["lr"] == 1e-3
        and opt.group_of(b)["lr"] == 5e-2
        and opt.group_of(b)["betas"] == (0.5, 0.6)
    )
    with pytest.raises(KeyError, match="the parameter is not in this SparseAdamW"):
        opt.group_of(torch.zeros(2, requires_grad=True))


def test_a_vector_never_linked_has_no_linked_ages_before_and_after_its_first_step():
    p = torch.zeros(3, requires_grad=True)
    opt = SparseAdamW([p], lr=1e-3)
    assert not opt.is_linked(p) and opt.linked_head_start(p) is None
    p.grad = torch.ones(3)
    opt.step()
    assert not opt.is_linked(p) and opt.linked_head_start(p) is None and opt.ages(p).tolist() == [1, 1, 1]


def test_hyperparameters_at_their_limits():
    """eps and weight decay 0 allowed, one step below refused; SM3's momentum in [0, 1): 1 refused, the
    float just below it allowed."""
    from spiel.delta import SparseDeltaLinear

    layer = SparseDeltaLinear(torch.nn.Linear(3, 2), 4)
    p = layer.values
    below_zero = math.nextafter(0.0, -1.0)
    SparseAdamW([p], lr=1e-3, eps=0.0, weight_decay=0.0)
    SparseSM3([p], {p: layer}, lr=1e-3, eps=0.0, weight_decay=0.0, momentum=0.0)
    SparseSM3([p], {p: layer}, lr=1e-3, momentum=math.nextafter(1.0, 0.0))
    for kw in ({"eps": below_zero}, {"weight_decay": below_zero}, {"weight_decay": -0.5}):
        with pytest.raises(ValueError, match="eps and weight_decay must be >= 0"):
            SparseAdamW([p], lr=1e-3, **kw)
    for kw in ({"lr": below_zero}, {"lr": -0.5}, {"eps": below_zero}, {"weight_decay": -0.5}):
        with pytest.raises(ValueError, match="lr, eps and weight_decay must be >= 0"):
            SparseSM3([p], {p: layer}, **{"lr": 1e-3, **kw})
    with pytest.raises(ValueError, match="lr must be >= 0"):
        SparseAdamW([p], lr=-0.5)
    for momentum in (1.0, below_zero):
        with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
            SparseSM3([p], {p: layer}, lr=1e-3, momentum=momentum)


def test_one_vector_alone_with_small_betas_equals_torch_adamw():
    """The per-vector step (one vector, or foreach=False) with β1, β2 under 0.5 (where 1 − β is not what
    other formulas of it give) against torch.optim.AdamW."""
    start = torch.randn(6, generator=torch.Generator().manual_seed(3))
    ours, theirs = start.clone().requires_grad_(), start.clone().requires_grad_()
    kw = dict(lr=1e-2, betas=(0.3, 0.4), eps=1e-8, weight_decay=0.1)
    opt_ours, opt_theirs = SparseAdamW([ours], **kw), torch.optim.AdamW([theirs], **kw, foreach=False)
    g = torch.Generator().manual_seed(4)
    for _ in range(5):
        grad = torch.randn(6, generator=g)
        for p, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            p.grad = grad.clone()
            opt.step()
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_linked_growth_steps_must_match_the_values_in_shape():
    p = torch.zeros(3, requires_grad=True)
    opt = SparseAdamW([p], lr=1e-3)
    for grown_at in (torch.zeros(2, dtype=torch.int32), torch.zeros(4, dtype=torch.int32), torch.zeros(1, 3)):
        with pytest.raises(ValueError, match=r"grown_at \(.*\) does not match the values \(3,\)"):
            opt.link_ages(p, grown_at, 1)
    opt.link_ages(p, torch.zeros(3, dtype=torch.int32), 1)
    assert opt.is_linked(p)


def test_linked_ages_with_no_head_start_equal_torch_adamw():
    """SpIEL-AG's default (adam_seeding=none): ages linked to grown_at with head start 0; with nothing grown
    every slot's age is the update count, so the steps are torch.optim.AdamW's."""
    start = torch.randn(5, generator=torch.Generator().manual_seed(8))
    ours, theirs = start.clone().requires_grad_(), start.clone().requires_grad_()
    opt_ours = SparseAdamW([ours], lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    opt_ours.link_ages(ours, torch.zeros(5, dtype=torch.int32), head_start=0)
    opt_theirs = torch.optim.AdamW([theirs], lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0)
    for grad in quadratic_grads(4, 5, seed=9):
        for p, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            p.grad = grad.clone()
            opt.step()
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    assert opt_ours.ages(ours).tolist() == [4] * 5


@pytest.mark.parametrize("foreach", [True, False])
def test_an_empty_values_vector_beside_others_steps_like_torch_adamw(foreach):
    """A matrix left with no entries (a global budget can give it none) holds an empty values vector: it has
    no ages to bound the bias-correction table, and the others step as torch.optim.AdamW."""
    start = torch.randn(4, generator=torch.Generator().manual_seed(10))
    empty, ours, theirs = (
        torch.zeros(0, requires_grad=True),
        *(start.clone().requires_grad_() for _ in range(2)),
    )
    opt_ours = SparseAdamW([empty, ours], lr=1e-2, foreach=foreach)
    opt_theirs = torch.optim.AdamW([theirs], lr=1e-2, weight_decay=0.0)
    for grad in quadratic_grads(3, 4, seed=11):
        empty.grad = torch.zeros(0)
        for p, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            p.grad = grad.clone()
            opt.step()
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    assert empty.numel() == 0 and opt_ours.update_count(empty) == 3


def test_every_param_group_steps_after_a_multi_tensor_one():
    """Two groups of two vectors (each group takes the multi-tensor step) with their own lr: both groups move
    exactly as torch.optim.AdamW with the same groups."""
    starts = [torch.randn(3, generator=torch.Generator().manual_seed(20 + i)) for i in range(4)]
    ours = [s.clone().requires_grad_() for s in starts]
    theirs = [s.clone().requires_grad_() for s in starts]

    def groups(ps):
        return [{"params": ps[:2], "lr": 1e-2}, {"params": ps[2:], "lr": 3e-2}]

    opt_ours = SparseAdamW(groups(ours), weight_decay=0.0, foreach=True)
    opt_theirs = torch.optim.AdamW(groups(theirs), weight_decay=0.0)
    for step in range(3):
        grads = quadratic_grads(4, 3, seed=30 + step)
        for ps, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            for p, g in zip(ps, grads, strict=True):
                p.grad = g.clone()
            opt.step()
    for a, b, s in zip(ours, theirs, starts, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        assert not torch.equal(a.detach(), s)


def test_sm3_has_no_weight_decay_by_default():
    shape = (3, 4)
    indices = torch.tensor([0, 5, 7, 11], dtype=torch.int32)
    start = torch.ones(4)
    grads = quadratic_grads(3, 4, seed=12)
    p = start.clone().requires_grad_()
    opt = SparseSM3([p], {p: Layout(indices, shape)}, lr=0.05)
    for grad in grads:
        p.grad = grad.clone()
        opt.step()
    values, _, _ = dense_sm3_reference(start, indices, shape, grads, 0.05, 1e-8, 0.0, 0.0)
    torch.testing.assert_close(p.detach(), values, rtol=1e-5, atol=1e-6)


def test_decay_problem_names_a_fractional_one_over_lr():
    from spiel.optim.slot_state import decay_problem

    assert decay_problem(0.3, 4.0).endswith("use weight_decay < 1/lr = 3.33333")


def test_resize_slots_keeps_the_chosen_slots_then_zeroes_the_new_ones():
    p = torch.zeros(3, requires_grad=True)
    opt = SparseAdamW([p], lr=1e-2)
    m0, v0 = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.4, 0.5, 0.6])
    opt.reset_slots(p, torch.arange(3), exp_avg=m0, exp_avg_sq=v0, age=torch.tensor([1, 2, 3]))
    opt.resize_slots(p, torch.tensor([2, 0]), n_new=2)
    state = opt.state[p]
    assert state["exp_avg"].tolist() == pytest.approx([0.3, 0.1, 0.0, 0.0])
    assert state["exp_avg_sq"].tolist() == pytest.approx([0.6, 0.4, 0.0, 0.0])
    assert state["exp_avg"].shape == (4,) and state["born"].shape == (4,)


def test_defaults_are_torch_adamw_s_and_sm3_s():
    """Unset settings: SparseAdamW takes torch.optim.AdamW's lr, betas and eps with no decay; SparseSM3 the
    same lr and eps, no momentum and no decay."""
    p = torch.nn.Parameter(torch.zeros(3))
    torch_defaults = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))]).defaults
    adamw = SparseAdamW([p]).defaults
    assert {k: adamw[k] for k in ("lr", "betas", "eps")} == {
        k: torch_defaults[k] for k in ("lr", "betas", "eps")
    }
    assert adamw["weight_decay"] == 0.0
    sm3 = SparseSM3([p], {p: Layout(torch.tensor([0, 4, 5]), (2, 3))}).defaults
    assert sm3 == {
        "lr": torch_defaults["lr"],
        "momentum": 0.0,
        "eps": torch_defaults["eps"],
        "weight_decay": 0.0,
    }


def test_a_loaded_state_is_the_optimizer_s_own_copy():
    """load_state_dict copies every state tensor: changing the dict it was given (or stepping) afterwards
    leaves the other untouched."""
    p = torch.nn.Parameter(torch.zeros(3))
    opt = SparseAdamW([p], lr=1e-2)
    p.grad = torch.ones(3)
    opt.step()
    saved = opt.state_dict()
    kept = {k: v.clone() for k, v in saved["state"][0].items() if torch.is_tensor(v)}
    fresh = SparseAdamW([p], lr=1e-2)
    fresh.load_state_dict(saved)
    for key, value in saved["state"][0].items():
        if torch.is_tensor(value):
            assert fresh.state[p][key] is not value
            value.add_(7)  # the caller reuses its dict
    for key, value in kept.items():
        assert torch.equal(fresh.state[p][key], value), key
