"""Drop/grow selection against constructed problems and dense references."""

import math

import pytest
import torch
import torch.nn as nn

from spiel.delta import SparseDeltaLinear, indices
from spiel.delta.indices import isin_sorted
from spiel.optim import SparseAdamW, SparseSM3
from spiel.selection import ReselectionSchedule, SelectionConfig, Selector, ma_grow_indices, top_candidates


def schedule(total_steps, **knobs):
    return ReselectionSchedule.of(total_steps, SelectionConfig(**knobs))


def test_linear_schedule_is_eq8_with_full_first_replacement():
    s = schedule(200, reselection_steps=20, estimation_steps=5, initial_rate=0.2)
    assert [t for t in range(0, 201) if s.is_reselection(t)] == [5 + 20 * j for j in range(10)]
    assert s.num_to_replace(1000, 5) == 1000  # the first reselection replaces every slot
    for t in (25, 105, 185):
        assert s.num_to_replace(1000, t) == math.floor(0.2 * (200 - t) / 200 * 1000)


def test_a_schedule_is_a_frozen_value():
    """Selectors compare schedules on resume and share them: one cannot change under another's feet."""
    import dataclasses

    s = schedule(200, reselection_steps=20, estimation_steps=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.reselection_steps = 10
    assert s == schedule(200, reselection_steps=20, estimation_steps=5) and hash(s) == hash(
        schedule(200, reselection_steps=20, estimation_steps=5)
    )


def test_cosine_schedule_is_eq11():
    s = schedule(200, reselection_steps=20, estimation_steps=5, schedule="cosine")
    for t in (5, 25, 105, 185):
        assert s.num_to_replace(1000, t) == math.floor(0.2 / 2 * (1 + math.cos(math.pi * t / 200)) * 1000)


def test_estimation_phases_are_the_gamma_steps_before_each_reselection():
    s = schedule(60, reselection_steps=20, estimation_steps=5)
    in_phase = [t for t in range(60) if s.in_estimation_phase(t)]  # t = completed steps
    assert in_phase == [0, 1, 2, 3, 4, 20, 21, 22, 23, 24, 40, 41, 42, 43, 44]
    assert schedule(22, reselection_steps=20, estimation_steps=5).in_estimation_phase(20) is False


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(estimation_steps=20), "estimation_steps must satisfy"),
        (dict(estimation_steps=0), "estimation_steps must satisfy"),
        (dict(schedule="step"), "schedule must be"),
        (dict(initial_rate=1.5), "initial_rate"),
    ],
)
def test_schedule_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        schedule(100, **kwargs)


def feed_dense_gradient(layer, dense):
    """One micro-batch whose dL/dW is exactly ``dense`` [out, in]: one-hot inputs, chosen output grads."""
    x = torch.eye(layer.in_features)
    y = layer(x)
    y.backward(dense.t().contiguous())


def test_ag_grows_the_top_mean_step_gradient_candidates_with_accumulation():
    torch.manual_seed(0)
    out_f, in_f, k, gamma = 6, 8, 10, 3
    layer = SparseDeltaLinear(nn.Linear(in_f, out_f, bias=False), k)
    layer.base_layer.requires_grad_(False)
    with torch.no_grad():
        layer.values.copy_(torch.linspace(0.1, 1.0, k))  # slot i's magnitude grows with i
    opt = SparseAdamW([layer.values], lr=0.0, betas=(0.9, 0.99))  # lr 0: values stay put
    sel = Selector(
        {"l": layer},
        opt,
        SelectionConfig(
            reselection_steps=10,
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
    micro = [[torch.randn(out_f, in_f, generator=g) for _ in range(2)] for _ in range(gamma)]
    first_indices = layer.indices.clone()
    for step in micro:
        for dense in step:  # gradient accumulation: two micro-batches per optimizer step
            feed_dense_gradient(layer, dense)
        opt.step()
        opt.zero_grad()
        sel.step()

    # Reference, from the definitions: candidates = top-k |grad| of the very first micro-batch;
    # step gradient = sum of its micro-batches; rank by |mean over steps|.
    candidates = micro[0][0].abs().view(-1).topk(k).indices
    step_grads = torch.stack([sum(step) for step in micro]).view(gamma, -1)[:, candidates]
    mean, mean_sq = step_grads.mean(0), (step_grads**2).mean(0)
    n = math.floor(0.5 / 2 * (1 + math.cos(math.pi * gamma / 100)) * k)
    dropped = set(first_indices[:n].tolist())  # the n smallest values sit in the first n slots
    staying = set(first_indices[n:].tolist())
    eligible = [i for i in range(k) if int(candidates[i]) not in staying]
    grown = sorted(eligible, key=lambda i: -abs(float(mean[i])))[:n]
    expected = staying | {int(candidates[i]) for i in grown}
    got = layer.indices.tolist()
    assert got == sorted(expected) and len(got) == k

    state = opt.state[layer.values]
    for i in grown:
        pos = int(candidates[i])
        slot = got.index(pos)
        if pos in dropped:  # dropped and regrown: keeps its value, not reseeded
            assert layer.grown_at[slot] == 0 and layer.values[slot] != 0
            continue
        assert (
            layer.values[slot] == 0
            and layer.grown_at[slot] == gamma
            and opt.ages(layer.values)[slot] == gamma
        )
        torch.testing.assert_close(state["exp_avg"][slot], mean[i] * (1 - 0.9**gamma))
        torch.testing.assert_close(state["exp_avg_sq"][slot], mean_sq[i] * (1 - 0.99**gamma))


def test_ag_ages_stay_exact_when_an_optimizer_update_was_skipped():
    """Derived ages assume update count == selector step; a skipped update (e.g. an overflowing fp16 step)
    makes the selector keep that layer's ages per slot, so grown slots still start at age γ."""
    torch.manual_seed(0)
    gamma = 2
    layer = SparseDeltaLinear(nn.Linear(8, 6, bias=False), 10)
    layer.base_layer.requires_grad_(False)
    opt = SparseAdamW([layer.values], lr=1e-3)
    sel = Selector(
        {"l": layer},
        opt,
        SelectionConfig(reselection_steps=10, estimation_steps=gamma, adam_seeding="full"),
        method="ag",
        seed=0,
        total_steps=50,
    )
    x = torch.randn(4, 8)
    for step in range(gamma):
        layer(x).pow(2).sum().backward()
        if step > 0:  # the first update is skipped
            opt.step()
        opt.zero_grad()
        sel.step()
    grown = layer.grown_at == gamma
    assert grown.any()
    assert opt.linked_head_start(layer.values) is None  # now per slot
    assert bool((opt.ages(layer.values)[grown] == gamma).all())
    assert bool((opt.ages(layer.values)[~grown] == 1).all())


def test_ma_grows_the_top_outer_product_scores_of_inactive_entries():
    g = torch.Generator().manual_seed(0)
    out_f, in_f = 37, 53
    row, col = torch.rand(out_f, generator=g), torch.rand(in_f, generator=g)
    active = torch.randperm(out_f * in_f, generator=g)[:300].sort().values.int()
    scores = torch.outer(row, col).view(-1).clone()
    scores[active.long()] = -1
    expected = scores.topk(120).indices
    got = ma_grow_indices(row, col, active, 120, chunk_elements=200)  # chunks of 3 rows
    assert got.tolist() == expected.tolist()
    assert not torch.isin(got, active.long()).any()


@pytest.mark.parametrize("far_off", [False, True], ids=["sampled-threshold", "fallback"])
def test_top_n_by_sampled_threshold_is_exact_with_ties_to_the_lower_position(monkeypatch, far_off):
    from spiel.selection import grow

    monkeypatch.setattr(grow, "SAMPLE_SIZE", 512)  # sampling on at test sizes
    if far_off:  # a sample that lets fewer than n scores through: the running top-n must take over
        monkeypatch.setattr(grow, "_sample_threshold", lambda *args: torch.tensor(float("inf")))
    g = torch.Generator().manual_seed(4)
    out_f, in_f, n = 60, 70, 300
    dense = torch.randn(out_f, in_f, generator=g).round(decimals=1)  # many equal |g| values
    got = grow.top_candidates(dense, n, chunk_elements=700)  # 6 chunks of 10 rows
    flat = dense.view(-1).abs()
    # Reference: by |g| descending, equal values by position ascending.
    order = sorted(range(flat.numel()), key=lambda i: (-float(flat[i]), i))[:n]
    assert got.tolist() == sorted(order)
    row, col = torch.rand(out_f, generator=g).round(decimals=1), torch.rand(in_f, generator=g)
    active = torch.randperm(out_f * in_f, generator=g)[:500].sort().values.int()
    scores = torch.outer(row, col).view(-1).clone()
    scores[active.long()] = -1
    expected = sorted(range(scores.numel()), key=lambda i: (-float(scores[i]), i))[:n]
    assert grow.ma_grow_indices(row, col, active, n, chunk_elements=700).tolist() == expected


def spy_on_sorts(monkeypatch, grow):
    """The sizes of the candidate sets that ``_best_first`` sorts (one per sort)."""
    sizes, real = [], grow._best_first
    monkeypatch.setattr(grow, "_best_first", lambda index, *a: sizes.append(index.numel()) or real(index, *a))
    return sizes


@pytest.mark.parametrize("rule", ["plain", "normalized", "ma"])
def test_a_sampled_threshold_keeps_about_n_scores_and_one_sort_finishes(monkeypatch, rule):
    """The sample stands for the real scores: about 1.25·n + 4σ of them reach its threshold, so the chunks keep
    a little over n and one sort ends the search (a threshold from other scores keeps far more or too few)."""
    from spiel.selection import grow

    monkeypatch.setattr(grow, "SAMPLE_SIZE", 4096)
    sizes = spy_on_sorts(monkeypatch, grow)
    g = torch.Generator().manual_seed(5)
    out_f, in_f, n = 200, 200, 2000  # n = 5%: 205 expected in the sample, its 329th score: 1.6·n kept
    if rule == "ma":
        row, col = torch.rand(out_f, generator=g) + 0.5, torch.rand(in_f, generator=g) * 10
        active = torch.randperm(out_f * in_f, generator=g)[:400].sort().values.int()
        grow.ma_grow_indices(row, col, active, n, chunk_elements=4000)
    else:
        dense = torch.randn(out_f, in_f, generator=g) * (torch.arange(out_f)[:, None] + 1.0)
        factors = {}
        if rule == "normalized":  # rows scaled up, columns scaled up: the factors undo both
            factors = dict(
                row_factor=torch.rand(out_f, generator=g) + 0.5, col_factor=torch.rand(in_f, generator=g) * 10
            )
        grow.top_candidates(dense, n, chunk_elements=4000, **factors)
    assert len(sizes) == 1  # no running top-n after the threshold
    assert n <= sizes[0] <= 2 * n


@pytest.mark.parametrize("n,sampled", [(2999, True), (3000, False)])
def test_no_sample_once_n_is_a_quarter_of_the_scores(monkeypatch, n, sampled):
    """At n >= total/4 a threshold cannot save work: the running top-n merges chunk by chunk (one sort per
    chunk); one fewer and the sample is used (one sort)."""
    from spiel.selection import grow

    monkeypatch.setattr(grow, "SAMPLE_SIZE", 1024)
    sizes = spy_on_sorts(monkeypatch, grow)
    dense = torch.randn(120, 100, generator=torch.Generator().manual_seed(6))  # 12,000 = 4 · 3000
    got = grow.top_candidates(dense, n, chunk_elements=3000)  # 4 chunks of 30 rows
    assert got.tolist() == dense.view(-1).abs().topk(n).indices.sort().values.tolist()
    assert len(sizes) == (1 if sampled else 4)


@pytest.mark.parametrize("total,sampled", [(1024, False), (1025, True)])
def test_no_sample_of_a_matrix_no_larger_than_the_sample(monkeypatch, total, sampled):
    from spiel.selection import grow

    monkeypatch.setattr(grow, "SAMPLE_SIZE", 1024)
    sizes = spy_on_sorts(monkeypatch, grow)
    dense = torch.randn(total, 1, generator=torch.Generator().manual_seed(7))
    got = grow.top_candidates(dense, 10, chunk_elements=256)  # 5 chunks (4 of 256 rows, the last of 0 or 1)
    assert got.tolist() == dense.view(-1).abs().topk(10).indices.sort().values.tolist()
    assert (len(sizes) == 1) == sampled


def test_no_candidates_asked_none_found():
    dense = torch.randn(6, 7)
    for num in (0, -3):
        got = top_candidates(dense, num)
        assert got.dtype == torch.long and got.numel() == 0
    assert top_candidates(dense, 100).tolist() == list(range(42))  # more than there are: all of them
    assert ma_grow_indices(torch.rand(6), torch.rand(7), torch.tensor([3], dtype=torch.int32), 0).numel() == 0


def test_ma_growth_memory_stays_bounded():
    out_f, in_f = 2048, 2048
    row, col = torch.rand(out_f), torch.rand(in_f)
    active = torch.randperm(out_f * in_f)[:5000].sort().values.int()
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        ma_grow_indices(row, col, active, 5000, chunk_elements=1 << 16)
    largest = max(e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0)
    assert largest < out_f * in_f * 4 // 16  # a dense fp32 score matrix would be 16 MiB


def make_layers(seed=0, sizes=((24, 16), (16, 24))):
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Linear(i, o) for o, i in sizes])


@pytest.mark.parametrize(
    "method,growth",
    [
        ("ag", "paper"),
        ("ma", "paper"),
        ("ag", "normalized"),
        ("ag", "capped"),
        ("ag", "explore"),
        ("ag", "random"),
    ],
)
def test_invariants_hold_after_every_reselection(method, growth):
    from spiel import SpielConfig, get_spiel_model

    model = get_spiel_model(
        make_layers(),
        SpielConfig(
            method=method,
            num_tunable=100,
            reselection_steps=4,
            estimation_steps=2,
            growth=growth,
            growth_cap=2.0,
        ),
    )
    opt = model.make_optimizer(lr=1e-2)
    sel = model.make_selector(opt, total_steps=30)
    ks = {n: layer.k for n, layer in model.deltas.items()}
    g = torch.Generator().manual_seed(3)
    for _ in range(30):
        for _ in range(2):
            x = torch.randn(8, 16, generator=g)
            (model(x).pow(2).mean()).backward()
        opt.step()
        opt.zero_grad()
        before, state_before = {}, {}
        for name, layer in model.deltas.items():
            pairs = zip(layer.indices.tolist(), layer.values.detach().tolist(), strict=True)
            before[name] = {pos: (value, slot) for slot, (pos, value) in enumerate(pairs)}
            state_before[name] = {k: v.clone() for k, v in opt.state[layer.values].items()}
        sel.step()
        for name, layer in model.deltas.items():
            idx = layer.indices
            assert idx.dtype == torch.int32 and idx.numel() == ks[name] and layer.values.numel() == ks[name]
            assert bool((idx[1:] > idx[:-1]).all()), "indices must stay sorted and unique"
            for slot, pos in enumerate(idx.tolist()):
                if pos in before[name]:  # survived (or dropped and regrown): value and state moved with it
                    old_value, old_slot = before[name][pos]
                    assert float(layer.values[slot]) == old_value
                    for key in ("exp_avg", "exp_avg_sq", "born", "momentum_buffer"):
                        if key in state_before[name]:
                            assert torch.equal(
                                opt.state[layer.values][key][slot], state_before[name][key][old_slot]
                            )
                else:
                    assert float(layer.values[slot]) == 0.0 and int(layer.grown_at[slot]) == sel.t
    assert sel.t == 30
    if method == "ag" and growth != "explore":  # Adam ages derived from grown_at: nothing per slot beyond the
        # two moments (explore seeds two ages, fresh and γ, so it keeps them per slot)
        assert all("born" not in opt.state[layer.values] for layer in model.deltas.values())


def test_selector_checks_method_and_optimizer_match():
    layer = SparseDeltaLinear(nn.Linear(4, 4), 3)
    with pytest.raises(TypeError, match="SparseSM3"):
        Selector(
            {"l": layer}, SparseAdamW([layer.values]), SelectionConfig(), method="ma", seed=0, total_steps=10
        )
    with pytest.raises(ValueError, match="method"):
        Selector(
            {"l": layer},
            SparseSM3([layer.values], {layer.values: layer}),
            SelectionConfig(),
            method="rigl",
            seed=0,
            total_steps=10,
        )


@pytest.mark.parametrize("by_mask", [True, False], ids=["mask", "search"])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_isin_sorted_matches_torch_isin(monkeypatch, dtype, by_mask):
    if not by_mask:
        monkeypatch.setattr(indices, "ISIN_MASK_BYTES", 0)
    gen = torch.Generator().manual_seed(3)
    for n_set, n_el in [(0, 5), (5, 0), (1, 7), (50, 200), (300, 40), (4, 1)]:
        sorted_set = torch.randint(0, 120, (n_set,), generator=gen).unique().to(dtype)
        elements = torch.randint(-5, 130, (n_el,), generator=gen).to(dtype)
        assert torch.equal(isin_sorted(elements, sorted_set), torch.isin(elements, sorted_set))
    # set entries outside the elements' range (a padding value, negatives) match nothing
    sorted_set = torch.tensor([-7, 2, 5, torch.iinfo(dtype).max], dtype=dtype)
    elements = torch.tensor([5, 3, 2, 2, 5], dtype=dtype)
    assert isin_sorted(elements, sorted_set).tolist() == [True, False, True, True, True]


def test_isin_by_mask_declines_ranges_past_its_limits(monkeypatch):
    elements, members = torch.tensor([0, 99]), torch.tensor([99])
    monkeypatch.setattr(indices, "ISIN_MASK_BYTES_PER_ENTRY", 1000)
    monkeypatch.setattr(indices, "ISIN_MASK_BYTES", 100)  # the range is 100: exactly the limit
    assert indices.isin_by_mask(elements, members).tolist() == [False, True]
    assert indices.isin_by_mask(torch.tensor([0, 100]), members) is None  # one past it
    monkeypatch.setattr(indices, "ISIN_MASK_BYTES", 1 << 20)
    monkeypatch.setattr(indices, "ISIN_MASK_BYTES_PER_ENTRY", 33)  # 3 entries: at most 99 bytes
    assert indices.isin_by_mask(elements, members) is None
    assert indices.isin_by_mask(torch.tensor([0, 98]), members).tolist() == [False, False]
    assert indices.isin_by_mask(elements.float(), members) is None  # integers only


@pytest.mark.parametrize("chunk_elements", [1, 37, 200, 1 << 20])
def test_top_candidates_by_row_chunks_match_a_whole_matrix_topk(chunk_elements):
    g = torch.randn(23, 17, generator=torch.Generator().manual_seed(4))
    for num in (1, 40, 23 * 17, 10_000):
        expected = torch.topk(g.abs().view(-1), min(num, g.numel())).indices.sort().values
        assert torch.equal(top_candidates(g, num, chunk_elements=chunk_elements), expected)


@pytest.mark.parametrize("descending", [False, True])
def test_order_by_equals_a_stable_float_sort(descending):
    from spiel.selection.order import order_by

    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        x = torch.randn(500, generator=g).round(decimals=1)  # many ties
        x[torch.randint(500, (20,), generator=g)] = float("inf")
        x[torch.randint(500, (20,), generator=g)] = float("-inf")
        x[torch.randint(500, (5,), generator=g)] = -0.0  # equal to +0.0: ties go by position
        x[torch.randint(500, (5,), generator=g)] = float("nan")
        assert torch.equal(order_by(x, descending), torch.sort(x, descending=descending, stable=True).indices)


def test_one_process_needs_no_process_group():
    """Without torch.distributed set up (one process), rank 0's tensor is this one, and it is the same on
    all ranks: nothing is sent and nothing is refused."""
    import torch.distributed as dist

    from spiel.selection.distributed import (
        all_reduce_mean_,
        broadcast_from_rank0,
        check_same_on_all_ranks,
        global_mean,
        world_size,
    )

    assert not (dist.is_available() and dist.is_initialized())
    assert world_size() == 1
    t = torch.tensor([3, 1, 2])
    assert broadcast_from_rank0(t) is t and t.tolist() == [3, 1, 2]
    check_same_on_all_ranks(t, "indices")
    x = torch.tensor([1.0, 3.0])
    assert all_reduce_mean_(x) is x and x.tolist() == [1.0, 3.0]
    assert global_mean(x).tolist() == [1.0, 3.0] and global_mean(x) is not x


def test_a_phase_starts_at_each_period_start_that_leaves_room_for_its_estimation():
    """R = 5, γ = 2, 14 steps: phases start after 0, 5 and 10 completed steps (10 + 2 <= 14); with 11 steps
    the third would run past the end, so only 0 and 5."""
    s = schedule(14, reselection_steps=5, estimation_steps=2)
    assert [t for t in range(15) if s.starts_phase(t)] == [0, 5, 10]
    s = schedule(11, reselection_steps=5, estimation_steps=2)
    assert [t for t in range(12) if s.starts_phase(t)] == [0, 5]


@pytest.mark.parametrize("head_start", [2, 1000])  # 1000: past CPython's cache of small ints
def test_linked_ages_survive_growth_only_with_the_same_seed_age_at_the_same_step(head_start):
    """keep_ages_exact keeps a link while the grown slots' seed age equals the link's head start (by
    value, whatever int object carries it) and the optimizer has counted exactly t updates."""
    from types import SimpleNamespace

    from spiel.selection.rules.adam_ages import keep_ages_exact
    from tests.helpers.linked_ages import linked_after_one_step

    def linked_after_one_update():
        p, _, opt = linked_after_one_step(int(str(head_start)))  # a head start object of its own
        return opt, SimpleNamespace(values=p)

    opt, layer = linked_after_one_update()
    keep_ages_exact(opt, layer, int(str(head_start)), t=1)  # equal value, a different object
    assert opt.linked_head_start(layer.values) == head_start
    for seed_age, t in [(head_start + 1, 1), (torch.tensor([head_start] * 3), 1), (head_start, 2)]:
        opt, layer = linked_after_one_update()
        keep_ages_exact(opt, layer, seed_age, t=t)
        assert opt.linked_head_start(layer.values) is None
