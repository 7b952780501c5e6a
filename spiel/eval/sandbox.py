"""Check untrusted Python programs (generated code) against trusted checkers, in isolated subprocesses.

    res = run_check(program=prompt + completion, checker=prompt + test, entry_point="f", limits=SandboxLimits())
    res.status  # "passed" | "timed out" | "failed: <category>"

The program runs in one sandboxed process; the checker (trusted code defining `check(candidate)`) runs in
another that the program cannot reach, with `candidate` a proxy that calls the program's `entry_point` over
a pipe and gets the result back as a plain literal. Only the checker decides the verdict, so nothing the
program does to itself (exits, monkeypatching, rigged `__eq__`, trace hooks, stack walks) can make it pass.
`spiel/eval/_sandbox_child.py` documents the processes and the isolation.

Every status is one of a fixed set: "passed", "timed out", or "failed: " + a builtin exception name (the
checker's assertion, or the program's error re-raised by name), "Exception" (any other exception class),
"program ended" (it exited or died before answering), "unsupported value" (not a plain literal, or over
1 MiB), "sandbox error" or "sandbox unavailable (<mode>)". No free text of the program ever comes back.

Isolation: "auto" picks user namespaces ("userns"), else, as root, namespaces without a user namespace
("rootns"). Where neither works only "guard" remains: a Python-level guard plus Landlock and seccomp where
the kernel has them, and no protection of this machine where it has not. It runs only with
`allow_unsafe_guard=True`, otherwise every check fails with "sandbox unavailable". `isolation_report()`
says what this machine provides; it is recorded with results.
"""

from __future__ import annotations

import ast
import builtins
import functools
import json
import os
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
ISOLATIONS = ("auto", "userns", "rootns", "guard")
RUN_TO_END = "def check(candidate):\n    pass\n"  # checker of `run_program`: the program only has to load
_EXCEPTIONS = {n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, BaseException)}
FAILURES = frozenset({"Exception", "program ended", "unsupported value", "sandbox error"} | _EXCEPTIONS)


@dataclass(frozen=True)
class SandboxLimits:
    """Per-check limits. `timeout` is wall-clock seconds for the whole check (after start-up): loading the
    program and every call of its entry point; `call_timeout` (None: `timeout`) bounds each call."""

    timeout: float = 3.0
    call_timeout: float | None = None
    memory_mb: int = 1024  # RLIMIT_AS / RLIMIT_DATA, each of the program and the checker
    nproc: int = 64  # RLIMIT_NPROC: processes of the sandbox uid (nobody, shared by concurrent sandboxes)
    fsize_mb: int = 16  # RLIMIT_FSIZE: largest file the program may write
    nofile: int = 64  # RLIMIT_NOFILE
    tmpfs_mb: int = 64  # size of the tmpfs working directory
    isolation: str = "auto"  # auto | userns | rootns | guard
    allow_unsafe_guard: bool = False  # consent to guard mode (no namespaces; see the module docstring)
    uid: int | None = NOBODY  # outside identity of the program and the checker when the caller is root
    gid: int | None = NOBODY
    startup_grace: float = 10.0  # extra seconds the parent allows for interpreter start-up and teardown

    def __post_init__(self):
        if self.isolation not in ISOLATIONS:
            raise ValueError(f"sandbox.isolation={self.isolation!r}; choose one of {ISOLATIONS}")
        if not self.timeout > 0 or (self.call_timeout is not None and not self.call_timeout > 0):
            raise ValueError(f"sandbox.timeout and sandbox.call_timeout must be > 0 (got {self.timeout}, "
                             f"{self.call_timeout})")


@dataclass
class ExecResult:
    status: str  # "passed" | "timed out" | "failed: <category>"
    isolation: dict

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@functools.lru_cache(maxsize=1)
def python_runtime() -> tuple[list[str], list[str]]:
    """(directories to bind read-only, directories to hide) so that the sandbox can run this interpreter:
    its standard library and the directories of the shared libraries its extension modules load. Found
    once by importing every extension module in a throwaway interpreter and reading its memory map."""
    script = (
        "import importlib, json, os, sys\n"
        "dirs = [p for p in sys.path if os.path.isdir(p)]\n"
        "for d in dirs:\n"
        "    if d.endswith('lib-dynload'):\n"
        "        for f in sorted(os.listdir(d)):\n"
        "            try:\n"
        "                importlib.import_module(f.split('.')[0])\n"
        "            except BaseException:\n"
        "                pass\n"
        "libs = {ln.split()[-1] for ln in open('/proc/self/maps') if '.so' in ln.split()[-1]}\n"
        "print(json.dumps({'path': dirs, 'libs': sorted(libs)}))\n")
    out = subprocess.run([sys.executable, "-I", "-S", "-B", "-c", script], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=120, check=True, cwd="/")
    found = json.loads(out.stdout.strip().splitlines()[-1])
    wanted = sorted({os.path.realpath(p) for p in found["path"]}
                    | {os.path.dirname(os.path.realpath(f)) for f in found["libs"] if os.path.isfile(f)})
    binds: list[str] = []
    for path in wanted:  # a directory inside one already bound is covered
        if not any(path == b or path.startswith(b + os.sep) for b in binds):
            binds.append(path)
    masks = [os.path.join(os.path.realpath(p), sub) for p in found["path"] for sub in ("site-packages", "dist-packages")
             if os.path.isdir(os.path.join(p, sub))]
    return binds, masks


def run_check(program: str, checker: str, entry_point: str | None,
              limits: SandboxLimits = SandboxLimits()) -> ExecResult:
    """Run `program` and judge it with `checker`'s `check(candidate)`; never raises for anything either does."""
    workdir = tempfile.mkdtemp(prefix="spiel-sandbox-")
    read_fd, write_fd = os.pipe()
    root = os.geteuid() == 0
    binds, masks = python_runtime()
    header = {
        "program": program,
        "entry_point": entry_point,
        "result_fd": write_fd,
        "new_root": workdir,
        "binds": binds,
        "masks": masks,
        "timeout": float(limits.timeout),
        "call_timeout": float(limits.call_timeout or limits.timeout),
        "cpu_seconds": int(limits.timeout) + 2,
        "memory_bytes": int(limits.memory_mb) << 20,
        "fsize_bytes": int(limits.fsize_mb) << 20,
        "nofile": int(limits.nofile),
        "nproc": int(limits.nproc),
        "tmpfs_mb": int(limits.tmpfs_mb),
        "isolation": limits.isolation,
        "allow_guard": bool(limits.allow_unsafe_guard),
        "uid": limits.uid if root else None,
        "gid": limits.gid if root else None,
    }
    trusted = {"checker": checker, "entry_point": entry_point}
    stdin = b"".join(_part(x) for x in (header, trusted))
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", str(CHILD)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(write_fd,),
            cwd=workdir,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            start_new_session=True,
        )
    finally:
        os.close(write_fd)
    timed_out = False
    try:
        proc.communicate(stdin, timeout=limits.timeout + limits.startup_grace)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        _kill_group(proc.pid)
        proc.wait()
    with os.fdopen(read_fd, "rb") as r:
        lines = r.read(1 << 16).decode(errors="replace").splitlines()
    shutil.rmtree(workdir, ignore_errors=True)

    info = {}
    if lines:
        try:
            info = ast.literal_eval(lines[0])
        except (SyntaxError, ValueError):
            pass
    info = info if isinstance(info, dict) else {}
    if info.get("isolation") == "unavailable":
        return ExecResult(f"failed: sandbox unavailable ({limits.isolation})", info)
    verdict = lines[1] if len(lines) > 1 else None
    if verdict in ("passed", "timed out") or (verdict or "").removeprefix("failed: ") in FAILURES:
        return ExecResult(verdict, info)
    if timed_out or proc.returncode == 124:
        return ExecResult("timed out", info)
    return ExecResult("failed: sandbox error", info)


def run_program(program: str, limits: SandboxLimits = SandboxLimits()) -> ExecResult:
    """Passes when `program` loads (runs to its end) without an error. Unlike `run_check`, a hostile
    program can fake this; use it for probes and tests of the isolation, never for scoring."""
    return run_check(program, RUN_TO_END, None, limits)


def _part(obj) -> bytes:
    data = repr(obj).encode()  # plain dicts, lists, strings and numbers: a literal
    return len(data).to_bytes(8, "big") + data


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def default_workers() -> int:
    return max(1, min(16, os.cpu_count() or 1))


def run_checks(
    cases: Sequence[tuple[str, str, str | None]],
    limits: SandboxLimits = SandboxLimits(),
    n_workers: int | None = None,
    progress: bool = False,
) -> list[ExecResult]:
    """`run_check` for many (program, checker, entry_point) cases in parallel worker threads."""
    n_workers = n_workers or default_workers()
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        it = pool.map(lambda case: run_check(*case, limits=limits), cases)
        if progress:
            try:
                from tqdm.auto import tqdm

                it = tqdm(it, total=len(cases), desc="execute", unit="program")
            except ImportError:  # pragma: no cover
                pass
        return list(it)


PROBE_PROGRAM = """\
import os, socket
def probe():
    names = [n for _, n in socket.if_nameindex()] if hasattr(socket, "if_nameindex") else []
    return (sorted(os.listdir("/")), os.path.exists("/etc/passwd"), names)
"""
PROBE_CHECKER = """\
def check(candidate):
    root, passwd, interfaces = candidate()
    assert not passwd and interfaces in ([], ["lo"]) and "etc" not in root and "home" not in root
"""


@functools.lru_cache(maxsize=8)
def isolation_report(isolation: str = "auto", allow_unsafe_guard: bool = False) -> dict:
    """Which isolation a sandboxed program gets on this machine (probed once per setting): "runs" is the
    status of a plain program, "probe" is "passed" only when a program saw no host filesystem and no
    network interface but loopback."""
    limits = SandboxLimits(timeout=10.0, isolation=isolation, allow_unsafe_guard=allow_unsafe_guard)
    runs = run_program("import collections.abc, hashlib, math\n", limits)
    info = dict(runs.isolation)
    info["runs"] = runs.status
    info["probe"] = run_check(PROBE_PROGRAM, PROBE_CHECKER, "probe", limits).status
    info["rlimits"] = ["AS", "DATA", "NPROC", "CPU", "FSIZE", "NOFILE", "CORE"]
    return info
