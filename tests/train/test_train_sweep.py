"""Sweeps (-m): one run dir per job, each with its own wandb run; a failing job is recorded and does not
stop the others, and the sweep then exits non-zero."""

import pytest

from tests.helpers.runs import SMALL, run_cli, summary

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning"
)


def job_dirs(sweep_dir):
    return sorted(
        (p for p in sweep_dir.iterdir() if p.is_dir() and p.name[0].isdigit()), key=lambda p: p.name
    )


def test_sweep_of_two_jobs_writes_two_run_dirs_with_a_wandb_run_each(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sweep = tmp_path / "sweep"
    code = run_cli(
        [
            "-m",
            f"hydra.sweep.dir={sweep}",
            *SMALL,
            "max_steps=2",
            "method=ag,lora",
            "method.lr=1e-3",
            "logger=wandb",
        ]
    )
    assert code == 0
    jobs = job_dirs(sweep)
    assert len(jobs) == 2
    assert jobs[0].name.startswith("0_") and "method-ag" in jobs[0].name.split("+")
    assert jobs[1].name.startswith("1_") and "method-lora" in jobs[1].name.split("+")
    assert "logger" not in jobs[0].name  # logging choices do not name runs
    assert (jobs[0] / "final" / "spiel_config.json").is_file()
    assert (jobs[1] / "final" / "adapter_config.json").is_file()
    assert [summary(j)["method"] for j in jobs] == ["ag", "lora"]
    for job in jobs:  # wandb.finish() per job: each job has its own offline run
        assert len(list((job / "wandb").glob("offline-run-*"))) == 1, job


def test_a_failing_job_does_not_stop_the_sweep_but_fails_it(tmp_path):
    sweep = tmp_path / "sweep"
    code = run_cli(["-m", f"hydra.sweep.dir={sweep}", *SMALL, "max_steps=1", "micro_batch_size=3,2"])
    assert code == 1
    bad, good = job_dirs(sweep)
    assert "batch_size" in (bad / "FAILED").read_text()  # 4 is not a multiple of 3
    assert (good / "final" / "spiel_config.json").is_file() and not (good / "FAILED").exists()
