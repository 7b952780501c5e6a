"""Exact resume across processes, and identical SpIEL decisions on every DDP rank."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKERS = Path(__file__).parent / "workers"


def run(*args):
    subprocess.run([sys.executable, *map(str, args)], check=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ag", "ma"])
def test_resume_in_a_fresh_process_is_bit_identical(tmp_path, method):
    # 40 steps with reselections every 6 (estimation 2): stopping at 13 lands mid-estimation-phase.
    run(WORKERS / "resume_worker.py", method, 0, 40, tmp_path / "straight")
    run(WORKERS / "resume_worker.py", method, 0, 13, tmp_path / "first")
    run(WORKERS / "resume_worker.py", method, 13, 40, tmp_path / "resumed", tmp_path / "first")
    straight = load_file(tmp_path / "straight" / "spiel_delta.safetensors")
    resumed = load_file(tmp_path / "resumed" / "spiel_delta.safetensors")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    opt_a = torch.load(tmp_path / "straight" / "optimizer.pt")["state"]
    opt_b = torch.load(tmp_path / "resumed" / "optimizer.pt")["state"]
    for pid in opt_a:
        for key in opt_a[pid]:
            assert torch.equal(opt_a[pid][key], opt_b[pid][key]), (pid, key)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ag", "ma", "ag:normalized", "ag:capped", "ag:explore", "ag:random"])
def test_two_ddp_ranks_hold_identical_indices_after_every_reselection(tmp_path, method):
    port = free_port()
    procs = [subprocess.Popen([sys.executable, str(WORKERS / "ddp_worker.py"), method, str(rank), "2", str(port),
                               str(tmp_path)]) for rank in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert len(r0["history"]) == 6  # reselections at steps 2, 7, ..., 27
    for a, b in zip(r0["history"], r1["history"], strict=True):
        for name in a:
            assert torch.equal(a[name], b[name])
    for name in r0["values"]:
        assert torch.equal(r0["values"][name], r1["values"][name])
    # The first reselection replaced every random slot: the indices did move.
    first = r0["history"][0]
    assert any(not torch.equal(first[n], r0["history"][-1][n]) for n in first)


def test_a_selector_state_refuses_a_delta_without_its_growth_steps(tmp_path):
    """A compact (final) checkpoint holds no grown_at, from which AG's Adam ages derive: resuming a selector
    state onto it would silently restart every age, so it is refused; the training form resumes."""
    sys.path.insert(0, str(WORKERS))
    from resume_worker import base

    from spiel import SpielConfig, get_spiel_model
    from spiel.model import SpielModel

    model = get_spiel_model(base(), SpielConfig(method="ag", num_tunable=80, reselection_steps=6,
                                                estimation_steps=2, seed=3))
    optimizer = model.make_optimizer(lr=1e-2)
    selector = model.make_selector(optimizer, total_steps=40)
    for step in range(8):  # past the first reselection (step 6): some entries have grown_at > 0
        model(torch.randn(8, 16, generator=torch.Generator().manual_seed(step))).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        selector.step()
    assert any(bool((layer.grown_at > 0).any()) for layer in model.deltas.values())
    state = selector.state_dict()
    model.save_pretrained(tmp_path / "final")  # compact: no grown_at
    model.save_pretrained(tmp_path / "train", compact=False)
    for kind, ok in (("final", False), ("train", True)):
        again = SpielModel.from_pretrained(base(), tmp_path / kind, is_trainable=True)
        fresh = again.make_selector(again.make_optimizer(lr=1e-2), total_steps=40)
        if ok:
            fresh.load_state_dict(state)
        else:
            with pytest.raises(ValueError, match="not a compact final one"):
                fresh.load_state_dict(state)
