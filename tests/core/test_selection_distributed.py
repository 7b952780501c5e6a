"""spiel.selection.distributed on three CPU ranks (gloo, threads of one process would share the default group,
so real processes): the mean over ranks, rank 0's tensor, and the check that refuses ranks that disagree, on
the whole world and on a subgroup whose rank 0 is not global rank 0."""

from __future__ import annotations

import os
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from spiel.selection import distributed


def ranks_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # a forked child must not reuse the parent's thread pool (as DataLoader workers)
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
        found = {"world": distributed.world_size()}
        x = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float16) * (rank + 1)  # ranks hold 1x, 2x, 3x
        mean = distributed.global_mean(x)
        found["mean"], found["mean_dtype"], found["x_after"] = mean.tolist(), str(mean.dtype), x.tolist()
        x32 = x.float()
        distributed.global_mean(x32)
        found["x32_after"] = x32.tolist()  # a float32 input is copied too, not reduced in place
        blocks = distributed.global_block_grad(
            lambda r0, r1: torch.arange(r0, r1, dtype=torch.float32) * rank
        )
        found["block"] = blocks(2, 5).tolist()  # the mean over ranks of (rank · [2, 3, 4])
        found["broadcast"] = distributed.broadcast_from_rank0(torch.tensor([10 * rank + 7])).tolist()
        sub = dist.new_group([1, 2])  # every rank creates it; rank 1 is its rank 0
        if rank in (1, 2):
            found["sub_world"] = distributed.world_size(sub)
            found["sub_broadcast"] = distributed.broadcast_from_rank0(torch.tensor([10 * rank]), sub).tolist()
            found["sub_mean"] = distributed.all_reduce_mean_(torch.tensor([float(rank)]), sub).tolist()
            try:  # a world of two ranks is checked too: only a world of one has nothing to compare
                distributed.check_same_on_all_ranks(torch.tensor([rank]), "positions", sub)
                found["sub_refused"] = None
            except RuntimeError as e:
                found["sub_refused"] = str(e)
        distributed.check_same_on_all_ranks(torch.tensor([5, 6]), "indices")  # the same everywhere: passes
        try:
            distributed.check_same_on_all_ranks(torch.tensor([5, 6 + (rank == 2)]), "indices")
            found["refused"] = None
        except RuntimeError as e:
            found["refused"] = str(e)
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        found = {"error": traceback.format_exc()}
    torch.save(found, os.path.join(out_dir, f"rank{rank}.pt"))


def test_three_ranks_average_broadcast_and_refuse_a_rank_that_differs(tmp_path):
    # fork: the ranks start in a fraction of a second (spawn would import torch three times more)
    mp.start_processes(
        ranks_worker,
        args=(3, str(tmp_path / "init"), str(tmp_path)),
        nprocs=3,
        join=True,
        start_method="fork",
    )
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(3)]
    assert all("error" not in g for g in got), [g.get("error") for g in got]
    for rank, g in enumerate(got):
        assert g["world"] == 3
        assert g["mean"] == [2.0, 4.0, 8.0] and g["mean_dtype"] == "torch.float32"  # (1 + 2 + 3) / 3 = 2
        assert g["x_after"] == g["x32_after"] == [float(rank + 1) * v for v in (1.0, 2.0, 4.0)]  # left alone
        assert g["block"] == [2.0, 3.0, 4.0]  # (0 + 1 + 2) / 3 = 1 times the rows 2, 3, 4
        assert g["broadcast"] == [7]
        assert (g["refused"] is None) == (rank != 2)
    assert "rank 2 differs from rank 0" in got[2]["refused"] and "indices" in got[2]["refused"]
    assert got[1]["sub_world"] == got[2]["sub_world"] == 2
    assert got[1]["sub_broadcast"] == got[2]["sub_broadcast"] == [10]  # global rank 1, the subgroup's rank 0
    assert got[1]["sub_mean"] == got[2]["sub_mean"] == [1.5]
    assert got[1]["sub_refused"] is None and "SpIEL ranks disagree on positions" in got[2]["sub_refused"]


def ag_run(rank: int, world: int, growth: str, steps: int = 7) -> list[dict]:
    """SpIEL-AG on two linear layers, this rank's share of a 16-row global batch per step (world 1: all of it),
    the values' gradients averaged over ranks as DDP does; the indices after every reselection."""
    from spiel import SpielConfig, get_spiel_model

    torch.manual_seed(0)
    model = get_spiel_model(
        torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.Linear(24, 16)),
        SpielConfig(method="ag", growth=growth, num_tunable=120, reselection_steps=4, estimation_steps=2),
    )
    opt = model.make_optimizer(lr=1e-2)
    sel = model.make_selector(opt, total_steps=20)
    share, history = 16 // world, []
    for step in range(steps):
        x = torch.randn(16, 16, generator=torch.Generator().manual_seed(step))[
            rank * share : (rank + 1) * share
        ]
        model(x).pow(2).mean().backward()
        for layer in model.deltas.values():
            distributed.all_reduce_mean_(layer.values.grad)
        opt.step()
        opt.zero_grad()
        sel.step()
        if sel.schedule.is_reselection(sel.t):
            history.append({n: layer.indices.clone() for n, layer in model.deltas.items()})
    return history


def ag_worker(rank: int, world: int, init_file: str, out_dir: str, growth: str) -> None:
    torch.set_num_threads(1)  # a forked child must not reuse the parent's thread pool (as DataLoader workers)
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
        found = {"history": ag_run(rank, world, growth)}
        dist.destroy_process_group()
    except BaseException:
        found = {"error": traceback.format_exc()}
    torch.save(found, os.path.join(out_dir, f"ag{rank}.pt"))


@pytest.mark.parametrize(
    "growth,streamed",
    [("paper", False), ("paper", True), ("normalized", False)],
    ids=["whole-blocks", "row-blocks", "dense-gradient"],  # normalized takes the dense gradient, not blocks
)
def test_two_ag_ranks_grow_what_one_process_grows_from_the_whole_batch(
    tmp_path, monkeypatch, growth, streamed
):
    """Each rank sees half the batch: candidates from a rank's own gradient would differ between the ranks
    (refused by the indices check) and from one process's; from the global gradient they are the same."""
    from spiel.delta import function

    if streamed:  # the first gradient streamed row by row, in the forked ranks and in this process alike
        monkeypatch.setattr(function, "PROBE_STREAM_BYTES", 0)
        monkeypatch.setattr(function, "PROBE_BLOCK_BYTES", 1)
    mp.start_processes(
        ag_worker,
        args=(2, str(tmp_path / "init"), str(tmp_path), growth),
        nprocs=2,
        join=True,
        start_method="fork",
    )
    got = [torch.load(tmp_path / f"ag{r}.pt") for r in range(2)]
    assert all("error" not in g for g in got), [g.get("error") for g in got]
    one = ag_run(0, 1, growth)
    assert len(one) == len(got[0]["history"]) == 2  # reselections at steps 2 and 6
    for a, b in zip(one, got[0]["history"], strict=True):
        for name in a:
            assert torch.equal(a[name], b[name]), name
