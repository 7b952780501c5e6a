"""Reselecting the matrices of one shape together gives, bit for bit, what reselecting them one by one gives,
and each row-wise order is the dense reference order (score, then position)."""

import pytest
import torch
import torch.nn as nn

from spiel.selection import batched, grow
from spiel.selection.drop import drop_order


def reference_order(scores, descending):
    """Positions by score, equal scores by position ascending (plain Python)."""
    sign = -1 if descending else 1
    return sorted(range(scores.numel()), key=lambda i: (sign * float(scores[i]), i))


def test_drop_order_rows_is_the_reference_order_with_ties():
    g = torch.Generator().manual_seed(0)
    values = torch.randn(3, 50, generator=g).round(decimals=1)  # many equal magnitudes
    references = torch.randn(3, 50, generator=g).round(decimals=1)
    # "change" built at run time, as a config file's string is (not the interned literal)
    for criterion, refs in (("magnitude", None), ("".join(["ch", "ange"]), references)):
        got = batched.drop_order_rows(values, 20, criterion, refs)
        for i in range(3):
            score = (values[i] - (0 if refs is None else refs[i])).abs()
            assert got[i].tolist() == reference_order(score, False)[:20]
            assert (
                got[i].tolist()
                == drop_order(values[i], 20, criterion, None if refs is None else refs[i]).tolist()
            )


def test_kept_slots_and_valid_first():
    slots = torch.tensor([[4, 0, 2], [1, 5, 3]])
    assert batched.kept_slots(slots, 6).tolist() == [[1, 3, 5], [0, 2, 4]]
    mask = torch.tensor([[False, True, False, True], [True, True, False, False]])
    assert batched.valid_first(mask).tolist() == [[1, 3, 0, 2], [0, 1, 2, 3]]


def test_ag_grow_order_rows_takes_the_best_eligible_candidates():
    g = torch.Generator().manual_seed(1)
    L, K, n = 3, 40, 12
    candidates = torch.stack([torch.randperm(200, generator=g)[:K].sort().values for _ in range(L)])
    scores = torch.rand(L, K, generator=g).round(decimals=1)
    staying = torch.stack([torch.randperm(200, generator=g)[:150].sort().values for _ in range(L)])
    chosen, valid = batched.ag_grow_order_rows(candidates, scores, staying, n)
    for i in range(L):
        eligible = [j for j in range(K) if int(candidates[i, j]) not in set(staying[i].tolist())]
        expected = [j for j in reference_order(scores[i], True) if j in eligible][:n]
        assert chosen[i][valid[i]].tolist() == expected
        assert bool(valid[i, : len(expected)].all()) and not bool(valid[i, len(expected) :].any())
        assert (
            chosen[i][valid[i]].tolist()
            == grow.ag_grow_order(candidates[i], scores[i], staying[i], n).tolist()
        )


@pytest.mark.parametrize(
    "chunk_elements", [None, 3 * 70 * 7, "sorted columns"]
)  # scans in one chunk, in chunks of 7 rows; or only the columns that can pass
def test_ma_grow_rows_is_the_reference_order_with_ties(monkeypatch, chunk_elements):
    monkeypatch.setattr(grow, "SAMPLE_SIZE", 512)  # sampling on at test sizes
    if chunk_elements == "sorted columns":
        chunk_elements = None
    else:
        monkeypatch.setattr(batched, "sorted_columns_apply", lambda *a: False)
    g = torch.Generator().manual_seed(2)
    L, out_f, in_f, n = 3, 60, 70, 300
    row = torch.rand(L, out_f, generator=g).round(decimals=1)  # many equal products
    col = torch.rand(L, in_f, generator=g).round(decimals=1)
    active = torch.stack(
        [torch.randperm(out_f * in_f, generator=g)[:500].sort().values for _ in range(L)]
    ).int()
    grown, ok = batched.ma_grow_rows(row, col, active, n, chunk_elements=chunk_elements)
    assert all(ok)
    for i in range(L):
        scores = torch.outer(row[i], col[i]).view(-1).clone()
        scores[active[i].long()] = -1
        assert grown[i].tolist() == reference_order(scores, True)[:n]
        assert grown[i].tolist() == grow.ma_grow_indices(row[i], col[i], active[i], n).tolist()


def test_ma_grow_rows_leaves_a_far_off_sample_to_the_per_matrix_rule(monkeypatch):
    monkeypatch.setattr(grow, "SAMPLE_SIZE", 512)
    g = torch.Generator().manual_seed(3)
    row, col = torch.rand(2, 60, generator=g), torch.rand(2, 70, generator=g)
    row[1, :] = 0  # every score of row 1 is 0: at the threshold, all pass; so make row 1's threshold too high
    active = torch.stack([torch.randperm(4200, generator=g)[:100].sort().values for _ in range(2)])
    real_topk = torch.topk

    def high_threshold_for_row_1(t, k, **kw):  # a sample far off for the second matrix only
        out = real_topk(t, k, **kw)
        if t.dim() == 2:
            out.values[1] = 1.0
        return out

    monkeypatch.setattr(torch, "topk", high_threshold_for_row_1)
    grown, ok = batched.ma_grow_rows(row, col, active, 300)
    assert ok == [True, False]


def make_model(method, growth, drop, seed=0):
    from spiel import SpielConfig, get_spiel_model

    torch.manual_seed(seed)
    layers = nn.Sequential(*[nn.Linear(32, 32) for _ in range(3)], nn.Linear(32, 48), nn.Linear(48, 32))
    return get_spiel_model(
        layers,
        SpielConfig(
            method=method, num_tunable=400, reselection_steps=4, estimation_steps=2, growth=growth, drop=drop
        ),
    )


@pytest.mark.parametrize(
    "method,growth,drop",
    [
        ("ag", "paper", "magnitude"),
        ("ag", "normalized", "change"),
        ("ma", "paper", "magnitude"),
        ("ma", "paper", "change"),
        ("ag", "capped", "magnitude"),
    ],
)
def test_batched_reselection_equals_one_matrix_at_a_time(monkeypatch, method, growth, drop):
    monkeypatch.setattr(grow, "SAMPLE_SIZE", 256)  # MA's sampled threshold on at test sizes
    runs = []
    for batched_on in (True, False):
        model = make_model(method, growth, drop)
        opt = model.make_optimizer(lr=1e-2)
        sel = model.make_selector(opt, total_steps=30)
        sel.batched = batched_on
        runs.append((model, opt, sel))
    offers = []
    rule = runs[0][2].rule
    grow_rows = rule.grow_rows
    group_sizes = []  # how many layers each batched growth took at once
    monkeypatch.setattr(
        rule,
        "grow_rows",
        lambda *a: group_sizes.append(len(a[0])) or offers.append(grow_rows(*a)) or offers[-1],
    )
    g = torch.Generator().manual_seed(3)
    for _ in range(30):
        x = torch.randn(16, 32, generator=g)
        for model, opt, sel in runs:
            model(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            sel.step()
        (m1, o1, _), (m2, o2, _) = runs
        for (name, a), b in zip(m1.deltas.items(), m2.deltas.values(), strict=True):
            for attr in ("indices", "values", "grown_at"):
                assert torch.equal(getattr(a, attr), getattr(b, attr)), (name, attr)
            s1, s2 = o1.state[a.values], o2.state[b.values]
            assert s1.keys() == s2.keys()
            for key in s1:
                assert torch.equal(s1[key], s2[key]), (name, key)
    together = [offer is not None for offer in offers]
    assert together and all(together) == (growth != "capped")  # capped ranks under caps, one matrix at a time
    assert set(group_sizes) == {3, 1}  # the three 32x32 layers together; 32x48 and 48x32 alone


@pytest.mark.parametrize("rows_per_block", [1, 7, 60])
def test_streamed_top_candidates_is_the_reference_top_with_ties(rows_per_block):
    g = torch.Generator().manual_seed(5)
    dense = torch.randn(60, 70, generator=g).round(decimals=1)  # many equal |g|
    calls = []

    def block_grad(r0, r1):
        calls.append((r0, r1))
        return dense[r0:r1]

    positions, values = grow.streamed_top_candidates(block_grad, 60, 70, 300, rows_per_block)
    expected = sorted(reference_order(dense.view(-1).abs(), True)[:300])
    assert positions.tolist() == expected
    assert torch.equal(values, dense.view(-1)[positions])
    assert [r0 for r0, _ in calls] == list(range(0, 60, rows_per_block))  # each block once, in order


def test_ag_probe_streams_row_blocks_with_the_dense_probe_s_candidates(monkeypatch):
    """A probe whose dense gradient would be large takes its candidates from row blocks: the same candidates,
    the same values' gradient (to fp32 rounding), and no transient of the dense gradient's size."""
    from spiel.delta import SparseDeltaLinear, function

    torch.manual_seed(0)
    out_f, in_f, k = 512, 256, 3000
    layer = SparseDeltaLinear(nn.Linear(in_f, out_f, bias=False), k)
    layer.base_layer.requires_grad_(False)
    x = torch.randn(64, in_f)

    def run(stream):
        found = {}
        monkeypatch.setattr(function, "PROBE_STREAM_BYTES", 0 if stream else 1 << 40)
        monkeypatch.setattr(function, "PROBE_BLOCK_BYTES", 64 * in_f * 4)  # blocks of 64 rows
        from spiel.selection.rules import AccumulatedGradient

        def on_blocks(block_grad, rows):
            found["rows"] = rows
            found["candidates"], found["grad"] = grow.streamed_top_candidates(
                block_grad, out_f, in_f, k, rows
            )

        layer.values.grad = None
        layer.request_grad_blocks(on_blocks)
        with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
        ) as prof:
            layer(x).pow(2).sum().backward()
        found["largest"] = max(e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0)
        found["values_grad"] = layer.values.grad.clone()
        assert AccumulatedGradient.streams_candidates
        return found

    streamed, whole = run(True), run(False)
    assert streamed["rows"] == 64 and whole["rows"] == out_f
    y_grad = 2 * layer(x).detach()
    dense_grad = y_grad.t() @ x  # the dense reference dL/dW
    expected = sorted(reference_order(dense_grad.view(-1).abs(), True)[:k])
    assert streamed["candidates"].tolist() == expected == whole["candidates"].tolist()
    torch.testing.assert_close(streamed["grad"], dense_grad.view(-1)[streamed["candidates"]])
    torch.testing.assert_close(streamed["values_grad"], dense_grad.view(-1)[layer.indices.long()])
    assert whole["largest"] >= out_f * in_f * 4  # the dense gradient
    assert streamed["largest"] < out_f * in_f * 4 // 3  # blocks of 64 of 512 rows (dY itself is 1/4 of it)


@pytest.mark.parametrize(
    "free, expected",
    [
        (0, 1 << 20),  # no free memory reported: still a 1 Mi-element floor
        ((1 << 20) * 128 - 1, 1 << 20),
        ((1 << 20) * 128 + 128, (1 << 20) + 1),  # an eighth of a free float32 quarter, above the floor
        ((1 << 26) * 128, 1 << 26),
        (1 << 50, 1 << 26),  # capped
    ],
)
def test_group_chunks_on_cuda_follow_free_memory_between_floor_and_cap(monkeypatch, free, expected):
    """A CUDA device's group chunk is free bytes / 32 / 4 elements, within [2^20, 2^26] (free memory is
    faked: the rule, not the device, is under test); the CPU's is fixed."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free, 1 << 40))
    assert batched.group_chunk_elements(torch.device("cuda", 0)) == expected
    assert batched.group_chunk_elements(torch.device("cpu")) == batched.GROUP_CHUNK_ELEMENTS_CPU == 1 << 22
    assert (
        batched.group_chunk_elements(torch.device("meta")) == 1 << 22
    )  # another device (a name after "cuda")


def test_ma_grow_rows_samples_only_while_four_n_is_under_the_total(monkeypatch):
    """60x70 = 4200 positions: n = 1049 (4n one under the total) is sampled, n = 1050 (4n exactly the total)
    is left to the per-matrix rule (None), as grow.ma_grow_indices decides; so is n = 0."""
    monkeypatch.setattr(grow, "SAMPLE_SIZE", 512)
    g = torch.Generator().manual_seed(4)
    row, col = torch.rand(2, 60, generator=g), torch.rand(2, 70, generator=g)
    active = torch.stack([torch.randperm(4200, generator=g)[:100].sort().values for _ in range(2)])
    assert batched.ma_grow_rows(row, col, active, 1050) is None
    assert batched.ma_grow_rows(row, col, active, 0) is None
    grown, ok = batched.ma_grow_rows(row, col, active, 1049)
    for i in range(2):
        if ok[i]:
            assert grown[i].tolist() == grow.ma_grow_indices(row[i], col[i], active[i], 1049).tolist()


def test_ma_grow_rows_with_every_sample_far_off_falls_back_for_every_row(monkeypatch):
    """Thresholds so high that only a few dozen scores pass in each matrix (fewer than n): every row is
    left to the per-matrix rule, and nothing indexes past what passed."""
    monkeypatch.setattr(grow, "SAMPLE_SIZE", 512)
    g = torch.Generator().manual_seed(5)
    row, col = torch.rand(2, 60, generator=g), torch.rand(2, 70, generator=g)
    active = torch.stack([torch.randperm(4200, generator=g)[:100].sort().values for _ in range(2)])
    real_topk = torch.topk

    def far_off(t, k, **kw):
        out = real_topk(t, k, **kw)
        if t.dim() == 2:
            out.values[:] = 0.9  # products of two uniforms pass 0.9 about 0.5% of the time
        return out

    monkeypatch.setattr(torch, "topk", far_off)
    grown, ok = batched.ma_grow_rows(row, col, active, 300)
    assert ok == [False, False] and grown.shape == (2, 300)


@pytest.mark.parametrize("by_mask", [True, False], ids=["mask", "search"])
def test_isin_sorted_rows_looks_each_row_up_in_its_own_set(monkeypatch, by_mask):
    from spiel.delta import indices

    if not by_mask:
        monkeypatch.setattr(indices, "ISIN_MASK_BYTES", 0)
    g = torch.Generator().manual_seed(6)
    elements = torch.randint(0, 90, (4, 30), generator=g)
    sets = torch.stack([torch.randperm(90, generator=g)[:25].sort().values for _ in range(4)])
    sets[2, -3:] = torch.iinfo(torch.int64).max  # padding past every position, as the selector pads
    sets[2] = sets[2].sort().values
    got = batched.isin_sorted_rows(elements, sets)
    for i in range(4):
        assert got[i].tolist() == torch.isin(elements[i], sets[i]).tolist()
    assert batched.isin_sorted_rows(elements[:, :0], sets).shape == (4, 0)


def test_sort_rows_is_the_row_wise_sort():
    g = torch.Generator().manual_seed(7)
    values = torch.randint(0, 50, (5, 40), generator=g)  # repeats: a stable sort keeps their order
    values[3] = 49  # a row of one value (the largest allowed), and an empty shape below
    got_values, got_order = batched.sort_rows(values, 50)
    expected = torch.sort(values, dim=1, stable=True)
    assert torch.equal(got_values, expected.values) and torch.equal(got_order, expected.indices)
    assert batched.sort_rows(values[:, :0], 50)[0].shape == (5, 0)


def test_valid_first_is_a_stable_partition():
    g = torch.Generator().manual_seed(8)
    mask = torch.rand(6, 33, generator=g) < 0.4
    mask[1], mask[2] = True, False  # a row all valid, a row none
    expected = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices
    assert torch.equal(batched.valid_first(mask), expected)
    assert batched.valid_first(mask[:, :0]).shape == (6, 0)


def reference_passing(row, col, threshold):
    """Every (owner, position, score) with row[r]·col[c] >= threshold, from the whole product (plain)."""
    found = set()
    for i in range(row.shape[0]):
        scores = torch.outer(row[i], col[i]).view(-1)
        for p in (scores >= threshold[i]).nonzero().view(-1).tolist():
            found.add((i, p, float(scores[p])))
    return found


def as_set(owner, position, score):
    return set(zip(owner.tolist(), position.tolist(), score.tolist(), strict=True))


def test_passing_by_sorted_columns_finds_what_the_scan_finds():
    g = torch.Generator().manual_seed(9)
    L, out_f, in_f = 3, 40, 50
    row = torch.rand(L, out_f, generator=g).round(decimals=1)  # ties, and zero rows (no column passes)
    col = torch.rand(L, in_f, generator=g).round(decimals=1)
    row[0, :5] = 0
    col[1, 7] = 1e-20  # tiny products
    products = [torch.outer(row[i], col[i]).view(-1) for i in range(L)]
    # thresholds that some products meet exactly (a boundary), one that nothing meets, one that many meet
    threshold = torch.stack([products[0].max(), products[1].kthvalue(1500).values, torch.tensor(0.01)])
    threshold[0] = threshold[0] * 1.5
    assert batched.sorted_columns_apply(row, col, threshold)
    expected = reference_passing(row, col, threshold)
    assert as_set(*batched.passing_by_scan(row, col, threshold)) == expected
    assert as_set(*batched.passing_by_sorted_columns(row, col, threshold)) == expected
    threshold[1] = products[1].unique()[-3]  # exactly a product value
    expected = reference_passing(row, col, threshold)
    assert as_set(*batched.passing_by_sorted_columns(row, col, threshold)) == expected


@pytest.mark.parametrize(
    "change",
    [
        "negative row",
        "negative column",
        "nan row",
        "nan column",
        "zero threshold",
        "subnormal threshold",
        "inf threshold",
        "inf column",
    ],
)
def test_sorted_columns_are_not_used_where_they_could_differ_from_the_scan(change):
    row, col = torch.rand(2, 6), torch.rand(2, 7)
    threshold = torch.tensor([0.1, 0.2])
    assert batched.sorted_columns_apply(row, col, threshold)
    if change == "negative row":
        row[1, 2] = -0.5
    elif change == "negative column":
        col[0, 6] = -0.5
    elif change == "nan row":
        row[0, 0] = float("nan")
    elif change == "inf threshold":
        threshold[1] = float("inf")
    elif change == "nan column":
        col[0, 3] = float("nan")
    elif change == "zero threshold":
        threshold[0] = 0.0
    elif change == "subnormal threshold":
        threshold[1] = 1e-40
    else:
        col[1, 0] = float("inf")
    assert not batched.sorted_columns_apply(row, col, threshold)


def test_ma_grow_rows_scans_when_the_sorted_columns_do_not_apply(monkeypatch):
    monkeypatch.setattr(grow, "SAMPLE_SIZE", 512)
    g = torch.Generator().manual_seed(10)
    row, col = torch.rand(2, 60, generator=g), torch.rand(2, 70, generator=g)
    active = torch.stack([torch.randperm(4200, generator=g)[:100].sort().values for _ in range(2)])
    used = []
    for name in ("passing_by_scan", "passing_by_sorted_columns"):
        real = getattr(batched, name)
        monkeypatch.setattr(batched, name, lambda *a, real=real, name=name: used.append(name) or real(*a))
    fast = batched.ma_grow_rows(row, col, active, 300)
    monkeypatch.setattr(batched, "sorted_columns_apply", lambda *a: False)
    scanned = batched.ma_grow_rows(row, col, active, 300)
    assert used == ["passing_by_sorted_columns", "passing_by_scan"]
    assert torch.equal(fast[0], scanned[0]) and fast[1] == scanned[1]


@pytest.mark.parametrize("differ", ["none", "steps", "candidates", "betas", "no-steps"])
def test_ag_grows_layers_together_only_when_their_phases_stack(differ):
    """grow_rows stacks the layers' phase statistics into one row-wise growth: layers whose phases differ in
    length, in candidate count or in Adam's betas cannot be stacked and are left to the one-matrix rule. A
    phase with candidates but no completed step (nothing to average) grows nothing."""
    model = make_model("ag", "paper", "magnitude")
    opt = model.make_optimizer(lr=1e-2)
    sel = model.make_selector(opt, total_steps=30)
    g = torch.Generator().manual_seed(4)
    for _ in range(1):  # one step into the first estimation phase (reselection at t = 2)
        model(torch.randn(16, 32, generator=g)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        sel.step()
    rule = sel.rule
    names = [name for name in rule.layers if rule.layers[name].weight.shape == (32, 32)][:2]
    assert len(names) == 2 and all(rule.phases[n].steps > 0 for n in names)
    phase = rule.phases[names[1]]
    if differ == "steps":
        phase.steps += 1
    elif differ == "no-steps":
        for name in names:
            rule.phases[name].steps = 0
    elif differ == "candidates":
        for attr in ("candidates", "grad_sum", "grad_sq_sum"):
            setattr(phase, attr, getattr(phase, attr)[:-1])
    elif differ == "betas":
        values = rule.layers[names[1]].values
        group = opt.group_of(values)
        group["params"] = [p for p in group["params"] if p is not values]
        opt.add_param_group({"params": [values], "betas": (0.8, 0.99)})
    layers = [rule.layers[n] for n in names]
    k = layers[0].indices.numel()
    staying = torch.stack([la.indices[: k // 2].long() for la in layers])
    active = torch.stack([la.indices for la in layers])
    offer = rule.grow_rows(names, 5, staying, active, sel.t)
    assert (offer is None) == (differ != "none")
    positions, scores, seeds = rule.scored_growth(names[1], 5, staying[1], active[1], sel.t)
    assert (positions.numel() == 0) == (differ == "no-steps") and positions.numel() == scores.numel()
    assert (seeds == {}) == (differ == "no-steps")


@pytest.mark.parametrize("n", [839, 840])
def test_ma_grow_rows_takes_the_sampled_threshold_well_below_a_quarter(monkeypatch, n):
    """n a fifth of the 4200 positions: about 1.25·n + 4σ of the 2048 sampled products reach the threshold,
    enough that every matrix finds its n without the per-matrix rule (ok), and the grown are the top n."""
    monkeypatch.setattr(grow, "SAMPLE_SIZE", 2048)
    g = torch.Generator().manual_seed(11)
    row, col = torch.rand(3, 60, generator=g), torch.rand(3, 70, generator=g)
    active = torch.stack([torch.randperm(4200, generator=g)[:50].sort().values for _ in range(3)])
    grown, ok = batched.ma_grow_rows(row, col, active, n)
    assert ok == [True, True, True]
    for i in range(3):
        scores = torch.outer(row[i], col[i]).view(-1).clone()
        scores[active[i].long()] = -1
        assert grown[i].tolist() == reference_order(scores, True)[:n]
