"""Running spiel-train from tests: in-process through the real entry point (spiel.cli.train.main), or as a
subprocess (python -m spiel.cli.train) where a separate process matters (kill, torchrun)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from tests.helpers.paths import REPO

# A few optimizer steps on the tiny model and a slice of the demo data: the smoke preset users have too
# (configs/debug/smoke.yaml); overrides after it win.
SMALL = ["debug=smoke"]
# SpIEL with reselections inside a few steps: estimation 1 step, reselect every 2.
SPIEL_FAST = ["method.reselection_steps=2", "method.estimation_steps=1", "method.rank_equiv=4"]


def free_port() -> int:
    """A TCP port free on this host now, for a process group's rendezvous (--master_port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(args: list[str], monkeypatch=None) -> int:
    """spiel-train in this process; returns the exit code (0 when main returns)."""
    from spiel.cli import train

    old = sys.argv
    sys.argv = ["spiel-train", *args]
    try:
        train.main()
        return 0
    except SystemExit as e:
        return int(e.code or 0)
    finally:
        sys.argv = old


def subprocess_env() -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared CI cores: no spinning threads
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("WANDB_MODE", "disabled")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def popen_cli(args: list[str], cwd: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "spiel.cli.train", *args],
        cwd=cwd,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def only_run_dir(root: Path) -> Path:
    dirs = [p for p in Path(root).iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def grown_at_steps(run_dir: Path) -> dict[str, int]:
    """How many final positions were grown at each step (``param_ages.json``; ``final/`` keeps no grown_at)."""
    return json.loads((Path(run_dir) / "param_ages.json").read_text())["grown_at_step"]
