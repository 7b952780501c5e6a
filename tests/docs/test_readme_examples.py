"""The README cannot go stale: its quick start, the other commands of its shell blocks that run offline on a
CPU, and its Python blocks run here as written, in a scratch directory (so every run dir is fresh); the
commands that need a GPU or a download at least compose their config (``--cfg job``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.readme import code_blocks, commands, console_modules
from tests.helpers.runs import subprocess_env

TIMEOUT = 1800  # the demo run is ~1 CPU minute; a shared CI box can stretch that several-fold


def offline(argv: list[str]) -> bool:
    """Whether a README command runs here: the shipped tiny model and demo data, a benchmark with shipped data."""
    keys = dict(a.split("=", 1) for a in argv[1:] if "=" in a)
    if keys.get("model", "tiny") != "tiny" or "experiment" in keys:
        return False
    if keys.get("data", "demo") not in ("demo", "demo_slice"):
        return False
    return argv[0] != "spiel-eval" or keys.get("bench") == "demo"


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """A README command, the spiel-* ones through this interpreter (so this checkout's code is what runs)."""
    modules = console_modules()
    assert argv[0] in modules, f"README command {argv[0]!r} is not an installed spiel entry point"
    return subprocess.run(
        [sys.executable, "-m", modules[argv[0]], *argv[1:]],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def spiel_commands() -> list[list[str]]:
    return [argv for block in code_blocks("bash") for argv in commands(block) if argv[0].startswith("spiel-")]


def _ok(result: subprocess.CompletedProcess, argv: list[str]) -> None:
    assert result.returncode == 0, (
        f"{' '.join(argv)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )


@pytest.mark.slow
def test_readme_runs_as_written(tmp_path):
    quick_start = commands(code_blocks("bash")[0])
    assert quick_start[0] == ["make", "setup"]  # the environment running this test is that set-up
    for argv in quick_start[1:]:
        _ok(run(argv, tmp_path), argv)
    assert (tmp_path / "outputs/train/default/final/spiel_config.json").is_file()

    # Running spiel-train again refuses with the way out the README gives, before any training.
    again = run(["spiel-train"], tmp_path)
    assert again.returncode == 2 and "overwrite=true" in again.stderr, again.stderr[-2000:]

    python_blocks = code_blocks("python")
    assert python_blocks, "the README has no Python example"
    for code in python_blocks:
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert result.returncode == 0, f"README Python block failed:\n{code}\n{result.stderr[-3000:]}"

    others = [argv for argv in spiel_commands() if offline(argv) and argv not in quick_start]
    assert others, "expected offline commands beyond the quick start (debug=smoke, spiel-export)"
    for argv in others:
        _ok(run(argv, tmp_path), argv)


@pytest.mark.slow
def test_readme_commands_compose(tmp_path):
    """Every spiel-* command of the README, the GPU-sized ones included, composes a valid config."""
    for argv in spiel_commands():
        _ok(run([*argv, "--cfg", "job"], tmp_path), argv)
