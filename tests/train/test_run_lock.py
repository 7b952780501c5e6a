"""One writer per run dir: a second spiel-train on a run dir in use is refused with the holder named,
before it writes anything there; the lock goes with its holder (a SIGKILLed holder leaves a stale lock
file that the next run takes over)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from spiel.training.engine import run_lock
from spiel.training.engine.run_lock import LOCK_NAME, RunLockedError
from tests.helpers.runs import run_cli, subprocess_env

HOLD = (
    "import sys, time\nfrom spiel.training.engine import run_lock\nrun_lock.acquire(sys.argv[1])\n"
    "print('held', flush=True)\ntime.sleep(600)\n"
)


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of tmp_path/out/run."""
    run_dir = tmp_path / "out" / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)], env=subprocess_env(), stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    yield run_dir, proc
    proc.kill()
    proc.wait()


def test_a_second_spiel_train_is_refused_naming_the_holder(holder, tmp_path, capsys):
    run_dir, proc = holder
    code = run_cli([f"output_root={tmp_path / 'out'}", "run_name=run", "debug=smoke"])
    err = capsys.readouterr().err
    assert code == 2 and f"is in use by another spiel-train (pid {proc.pid} on " in err, err
    assert "run_name=<other>" in err and "Traceback" not in err
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME]  # no .hydra/, no train.log


def test_a_killed_holder_leaves_a_stale_lock_that_is_taken_over(holder):
    run_dir, proc = holder
    with pytest.raises(RunLockedError, match=f"pid {proc.pid}"):
        run_lock.acquire(run_dir)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((run_dir / LOCK_NAME).read_text())["pid"] == proc.pid  # left behind
    run_lock.acquire(run_dir)
    try:
        assert json.loads((run_dir / LOCK_NAME).read_text())["pid"] == os.getpid()
        run_lock.acquire(run_dir)  # held already by this process: fine
    finally:
        run_lock.release(run_dir)


def test_without_flock_a_live_pid_holds_and_a_dead_one_is_stale(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "no locks available")

    monkeypatch.setattr(run_lock.fcntl, "flock", no_flock)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (run_dir / LOCK_NAME).write_text(
            json.dumps(
                {"pid": sleeper.pid, "host": os.uname().nodename, "started": "then", "command": "spiel-train"}
            )
        )
        with pytest.raises(RunLockedError, match=f"pid {sleeper.pid}"):
            run_lock.acquire(run_dir)
    finally:
        sleeper.kill()
        sleeper.wait()
    time.sleep(0.1)
    run_lock.acquire(run_dir)  # its pid is gone: stale
    run_lock.release(run_dir)


def test_a_finished_run_releases_its_lock(tmp_path):
    from tests.helpers.runs import SMALL, only_run_dir

    assert run_cli([f"output_root={tmp_path}", *SMALL, "max_steps=1"]) == 0
    run_dir = only_run_dir(tmp_path)
    probe = subprocess.run(
        [sys.executable, "-c", HOLD.replace("time.sleep(600)", "pass"), str(run_dir)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0 and "held" in probe.stdout, probe.stderr[-2000:]
