"""torchrun with two CPU processes (gloo): DDP through the Trainer, identical SpIEL decisions and deltas on
both ranks, one run dir."""

import json
import socket
import subprocess
import sys

import pytest

from tests.helpers.runs import only_run_dir, subprocess_env


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_rank_torchrun_ends_with_identical_deltas(tmp_path):
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
            str(free_port()), "-m", "spiel.train", f"output_root={tmp_path}", "method=ag",
            "method.reselection_steps=3", "method.estimation_steps=2", "method.rank_equiv=4", "max_steps=6",
            "batch_size=4", "micro_batch_size=1", "max_seq_len=64", "data.sources.0.cap=48", "save_steps=3",
            "logging_steps=1", "progress_bar=false", "device=cpu"]
    out = subprocess.run(args, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["grad_accum"] == 2  # 4 = 1 per pass × 2 ranks × 2
    digests = summary["rank_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # indices and values, hashed on each rank
    ages = json.loads((run_dir / "param_ages.json").read_text())
    assert set(ages["grown_at_step"]) - {"0"}, "no index was grown: the check above would be vacuous"
    assert (run_dir / "final" / "spiel_config.json").is_file()
    assert (run_dir / "checkpoint-6" / "rng_state_1.pth").is_file()  # every rank's RNG state is saved
