"""Launchers beyond torchrun: submitit (SLURM's code path, run here with its local executor) and
accelerate launch, each giving one DDP job on CPU (gloo)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from spiel.training.launch import launch_env
from tests.helpers.runs import free_port, grown_at_steps, load_tensors, only_run_dir, subprocess_env

# 6 optimizer steps of SpIEL-AG on the tiny model with reselections at steps 3 and 6.
DDP_RUN = [
    "method=ag",
    "method.reselection_steps=3",
    "method.estimation_steps=2",
    "method.rank_equiv=4",
    "max_steps=6",
    "batch_size=4",
    "micro_batch_size=1",
    "max_seq_len=64",
    "data.sources.0.cap=48",
    "save_steps=0",
    "logging_steps=1",
    "progress_bar=false",
    "device=cpu",
    "plot_ages=false",
]


def slurm_env(monkeypatch, **extra):
    for key in launch_env.DIST_KEYS:
        # set, then delete: monkeypatch then restores the key's absence too, so what set_from_submitit
        # writes into os.environ cannot leak into later tests (a WORLD_SIZE of 16 for every spiel-train)
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    values = {
        **dict(
            SUBMITIT_EXECUTOR="slurm",
            SLURM_JOB_ID="4711",
            SLURM_NTASKS="16",
            SLURM_JOB_NUM_NODES="2",
            SLURM_NODEID="1",
            SLURM_PROCID="9",
            SLURM_LOCALID="1",
            SLURM_JOB_NODELIST="gpu[03-04]",
        ),
        **extra,
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)


def test_slurm_task_gets_torchrun_variables(monkeypatch):
    slurm_env(monkeypatch, CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7")
    values = launch_env.set_from_submitit()
    port = values.pop("MASTER_PORT")
    assert values == {
        "RANK": "9",
        "WORLD_SIZE": "16",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "8",
        "MASTER_ADDR": "gpu03",
    }
    assert all(os.environ[k] == v for k, v in values.items())
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"  # cuda:LOCAL_RANK must stay valid
    slurm_env(monkeypatch, SLURM_PROCID="2", SLURM_NODEID="0", SLURM_LOCALID="2")  # another task of the job
    assert launch_env.set_from_submitit()["MASTER_PORT"] == port and 20000 <= int(port) <= 60000
    slurm_env(monkeypatch, SLURM_JOB_ID="4712")
    assert launch_env.set_from_submitit()["MASTER_PORT"] != port  # another job


def test_exported_master_port_and_an_inner_launcher_win(monkeypatch):
    slurm_env(monkeypatch, MASTER_PORT="29511")
    assert launch_env.set_from_submitit()["MASTER_PORT"] == "29511"
    slurm_env(monkeypatch)
    monkeypatch.setenv("RANK", "3")  # torchrun inside the SLURM task already set the process group up
    assert launch_env.set_from_submitit() is None and os.environ["RANK"] == "3"
    slurm_env(monkeypatch, SLURM_NTASKS="1")
    assert launch_env.set_from_submitit() is None and "RANK" not in os.environ
    slurm_env(monkeypatch)
    monkeypatch.delenv("SUBMITIT_EXECUTOR")  # not a submitit job
    assert launch_env.set_from_submitit() is None


def assert_one_ddp_job(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["grad_accum"] == 2
    digests = summary["rank_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    return summary


@pytest.mark.slow
def test_submitit_local_launcher_runs_one_ddp_job_of_two_tasks(tmp_path):
    env = subprocess_env()
    for key in launch_env.DIST_KEYS:
        env.pop(key, None)
    args = [
        sys.executable,
        "-m",
        "spiel.cli.train",
        "-m",
        "hydra/launcher=local_submitit",
        "hydra.launcher.tasks_per_node=2",
        f"hydra.sweep.dir={tmp_path}/sweep",
        f"output_root={tmp_path}",
        *DDP_RUN,
    ]
    out = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    logs = (
        "".join(p.read_text() for p in (tmp_path / "sweep").rglob("*.out"))
        if (tmp_path / "sweep").exists()
        else ""
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:] + logs[-3000:]
    jobs = [p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(jobs) == 1, jobs
    assert_one_ddp_job(jobs[0])


def final_delta(root):
    return load_tensors(only_run_dir(root) / "final" / "spiel_delta.safetensors")


@pytest.mark.slow
def test_accelerate_launch_gives_the_same_delta_as_torchrun(tmp_path):
    # On CPU, accelerate's --cpu flag starts ONE process whatever --num_processes says; --multi_gpu starts
    # N processes through torch's elastic launcher, and device=cpu makes them a gloo group.
    launchers = {
        "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"],
        "accelerate": [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
        ],
    }
    for name, launcher in launchers.items():
        port = ["--master_port" if name == "torchrun" else "--main_process_port", str(free_port())]
        args = [*launcher, *port, "-m", "spiel.cli.train", f"output_root={tmp_path / name}", *DDP_RUN]
        out = subprocess.run(
            args, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600
        )
        assert out.returncode == 0, name + out.stdout[-3000:] + out.stderr[-3000:]
        assert_one_ddp_job(only_run_dir(tmp_path / name))
    a, b = final_delta(tmp_path / "torchrun"), final_delta(tmp_path / "accelerate")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ages = [grown_at_steps(only_run_dir(tmp_path / name)) for name in ("torchrun", "accelerate")]
    assert ages[0] == ages[1]
    assert set(ages[0]) - {"0"}, "no index was regrown: the comparison would miss the selector"


def test_the_variables_come_from_submitits_own_helper(monkeypatch):
    """One implementation of the SLURM -> torch.distributed mapping: submitit's TorchDistributedEnvironment."""
    import submitit.helpers

    calls = []
    real = submitit.helpers.TorchDistributedEnvironment

    class Spy(real):
        def export(self, **kwargs):
            calls.append(kwargs)
            return super().export(**kwargs)

    monkeypatch.setattr(submitit.helpers, "TorchDistributedEnvironment", Spy)
    slurm_env(monkeypatch)
    launch_env.set_from_submitit()
    assert calls == [{"set_cuda_visible_devices": False, "overwrite": True}]
