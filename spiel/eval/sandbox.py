"""Run untrusted Python programs (generated code) in isolated, resource-limited subprocesses.

    results = run_programs(programs, SandboxLimits(timeout=3.0), n_workers=8)
    results[0].status  # "passed" | "timed out" | "failed: <last line of the error>"

Each program gets its own fresh interpreter (`python -I -S -B`, so no site-packages, no environment
variables, no user site, no bytecode written), its own process group and a throwaway working directory;
`spiel/eval/_sandbox_child.py` (the bootstrap, documented there) sets up network/mount/PID namespaces, a
read-only filesystem with a tmpfs working directory, an unprivileged identity and rlimits where the OS
allows, and falls back to a Python-level guard where it does not. The parent enforces the wall-clock
timeout a second time (kill of the whole process group) so nothing outlives a call.

`isolation_report()` says which layers this machine provides; it is recorded with HumanEval results.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

CHILD = Path(__file__).with_name("_sandbox_child.py")
NOBODY = 65534


@dataclass(frozen=True)
class SandboxLimits:
    """Per-program limits. `timeout` is wall-clock seconds for the program itself (after start-up)."""

    timeout: float = 3.0
    memory_mb: int = 1024  # RLIMIT_AS / RLIMIT_DATA
    nproc: int = 64  # RLIMIT_NPROC: processes of the sandbox uid (nobody, shared by concurrent sandboxes)
    fsize_mb: int = 16  # RLIMIT_FSIZE: largest file the program may write (its stderr included)
    nofile: int = 64  # RLIMIT_NOFILE
    tmpfs_mb: int = 64  # size of the tmpfs working directory
    # "auto": the best available of "userns" (user + network/mount/PID namespaces), "rootns" (root only,
    # namespaces without a user namespace) and "guard" (a Python-level guard, not a security boundary).
    # A named mode that this machine cannot provide makes every program fail with "sandbox unavailable".
    isolation: str = "auto"
    uid: int | None = NOBODY  # outside identity of the program when the caller is root (None: root; unsafe)
    gid: int | None = NOBODY
    startup_grace: float = 10.0  # extra seconds the parent allows for interpreter start-up and teardown


@dataclass
class ExecResult:
    status: str  # "passed" | "timed out" | "failed: ..."
    isolation: dict

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _last_line(text: str, limit: int = 300) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "").strip()[:limit]


def run_program(program: str, limits: SandboxLimits = SandboxLimits()) -> ExecResult:
    """Run one program; never raises for anything the program does."""
    workdir = tempfile.mkdtemp(prefix="spiel-sandbox-")
    token = secrets.token_hex(16)
    read_fd, write_fd = os.pipe()
    root = os.geteuid() == 0
    request = {
        "program": program,
        "token": token,
        "result_fd": write_fd,
        "workdir": workdir,
        "timeout": float(limits.timeout),
        "cpu_seconds": int(limits.timeout) + 2,
        "memory_bytes": int(limits.memory_mb) << 20,
        "fsize_bytes": int(limits.fsize_mb) << 20,
        "nofile": int(limits.nofile),
        "nproc": int(limits.nproc),
        "tmpfs_mb": int(limits.tmpfs_mb),
        "isolation": limits.isolation,
        "uid": limits.uid if root else None,
        "gid": limits.gid if root else None,
    }
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", str(CHILD)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=err,
                pass_fds=(write_fd,),
                cwd=workdir,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                start_new_session=True,
            )
        finally:
            os.close(write_fd)
        timed_out = False
        try:
            proc.communicate(json.dumps(request).encode(), timeout=limits.timeout + limits.startup_grace)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(proc.pid)
            proc.wait()
        with os.fdopen(read_fd, "rb") as r:
            report = r.read(1 << 16).decode(errors="replace").splitlines()
        err.seek(0)
        stderr = err.read(1 << 16).decode(errors="replace")
    shutil.rmtree(workdir, ignore_errors=True)

    info = {}
    if report:
        try:
            info = json.loads(report[0])
        except json.JSONDecodeError:
            pass
    if any(line == f"passed {token}" for line in report[1:]) and proc.returncode == 0 and not timed_out:
        return ExecResult("passed", info)
    if info.get("isolation") == "unavailable":
        return ExecResult(f"failed: sandbox unavailable ({limits.isolation})", info)
    if timed_out or proc.returncode == 124:
        return ExecResult("timed out", info)
    reason = _last_line(stderr) or f"exit code {proc.returncode}"
    return ExecResult(f"failed: {reason}", info)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def default_workers() -> int:
    return max(1, min(16, os.cpu_count() or 1))


def run_programs(
    programs: Sequence[str],
    limits: SandboxLimits = SandboxLimits(),
    n_workers: int | None = None,
    progress: bool = False,
) -> list[ExecResult]:
    """Run many programs in parallel worker threads (each one its own sandboxed subprocess)."""
    n_workers = n_workers or default_workers()
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        it = pool.map(functools.partial(run_program, limits=limits), programs)
        if progress:
            try:
                from tqdm.auto import tqdm

                it = tqdm(it, total=len(programs), desc="execute", unit="program")
            except ImportError:  # pragma: no cover
                pass
        return list(it)


@functools.lru_cache(maxsize=1)
def isolation_report() -> dict:
    """Which isolation layers a sandboxed program gets on this machine (probed once)."""
    res = run_program("import collections.abc, hashlib, math\n", SandboxLimits(timeout=10.0))
    info = dict(res.isolation)
    info["probe"] = res.status
    info["rlimits"] = ["AS", "DATA", "NPROC", "CPU", "FSIZE", "NOFILE", "CORE"]
    return info
