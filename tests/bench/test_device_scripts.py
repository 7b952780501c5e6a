"""The prepared device scripts (scripts/gpu_profile.sh, scripts/gpu_check.sh) run on a lent GPU with minutes
to spare, never in CI: every Python command they run is checked here against the script it calls (each
flag and value parses with that script's own argument parser, every benchmark method exists), so a renamed
flag or method fails on the CPU, not on the device."""

from __future__ import annotations

import re
import shlex

import pytest

from spiel.bench.step import STEP_METHODS, VARIANTS
from tests.helpers.paths import SCRIPTS
from tests.helpers.script_loader import load_script

DEVICE_SCRIPTS = ("gpu_profile.sh", "gpu_check.sh")


def python_commands(shell_file: str) -> list[tuple[str, list[str]]]:
    """(script name, its arguments) of every ``python scripts/NAME.py ...`` line, continuations joined."""
    text = (SCRIPTS / shell_file).read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        match = re.search(r"python scripts/(\w+)\.py([^|]*)", line)
        if match:
            args = match.group(2).replace('"$out"', "/tmp/out").replace("$out", "/tmp/out")
            found.append((match.group(1), shlex.split(args)))
    return found


COMMANDS = [(f, name, args) for f in DEVICE_SCRIPTS for name, args in python_commands(f)]


def test_the_device_scripts_run_the_benchmarks():
    names = {name for _, name, _ in COMMANDS}
    assert {"check_triton_cuda", "bench_kernel", "bench_step"} <= names, names
    assert sum(name == "bench_step" for _, name, _ in COMMANDS) >= 3


@pytest.mark.parametrize(
    "shell_file, name, args", COMMANDS, ids=[f"{f}:{n}:{i}" for i, (f, n, _) in enumerate(COMMANDS)]
)
def test_each_command_parses_with_its_scripts_parser(shell_file, name, args):
    module = load_script(name)
    if not hasattr(module, "parse_args"):  # scripts without options: run bare (or with the one they read)
        assert args in ([], ["--compile-only"]), (shell_file, name, args)
        return
    parsed = module.parse_args(args)  # argparse exits on an unknown flag or a bad value
    methods = getattr(parsed, "methods", None)
    if name == "bench_step" and methods:
        chosen = methods.split(",") if isinstance(methods, str) else list(methods)
        unknown = set(chosen) - set(STEP_METHODS) - set(VARIANTS)
        assert not unknown, f"{shell_file}: bench_step has no method(s) {sorted(unknown)}"


def test_a_renamed_flag_would_be_caught():
    with pytest.raises(SystemExit):
        load_script("bench_step").parse_args(["--gpu", "--no-such-flag"])
