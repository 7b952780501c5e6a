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
    total_memory_mb: int = 4096  # the whole sandbox tree (see `memory_cap`)
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
        if self.total_memory_mb < self.memory_mb:
            raise ValueError(
                f"sandbox.total_memory_mb={self.total_memory_mb} is below sandbox.memory_mb="
                f"{self.memory_mb}: the whole sandbox cannot hold less than one of its processes"
            )
        if not self.timeout > 0 or (self.call_timeout is not None and not self.call_timeout > 0):
            raise ValueError(
                f"sandbox.timeout and sandbox.call_timeout must be > 0 (got {self.timeout}, "
                f"{self.call_timeout})"
            )


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
        "print(json.dumps({'path': dirs, 'libs': sorted(libs)}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-B", "-c", script],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd="/",
    )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    wanted = sorted(
        {os.path.realpath(p) for p in found["path"]}
        | {os.path.dirname(os.path.realpath(f)) for f in found["libs"] if os.path.isfile(f)}
    )
    binds: list[str] = []
    for path in wanted:  # a directory inside one already bound is covered
        if not any(path == b or path.startswith(b + os.sep) for b in binds):
            binds.append(path)
    masks = [
        os.path.join(os.path.realpath(p), sub)
        for p in found["path"]
        for sub in ("site-packages", "dist-packages")
        if os.path.isdir(os.path.join(p, sub))
    ]
    return binds, masks


def capped_processes(limits: SandboxLimits) -> int:
    """RLIMIT_NPROC that bounds the tree: at most this many processes of `memory_mb` each fit in
    `total_memory_mb` (the sandbox's own supervisor, program and checker among them)."""
    return max(1, min(int(limits.nproc), int(limits.total_memory_mb) // int(limits.memory_mb)))


def _own_cgroup(controller: str) -> tuple[Path, str] | None:
    """(directory, "v1" | "v2") of this process's cgroup for ``controller``, where it is mounted."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, names, path = line.split(":", 2)
        if controller in names.split(","):
            found = Path("/sys/fs/cgroup", controller, path.lstrip("/"))
            if found.is_dir():
                return found, "v1"
    for line in lines:
        if line.startswith("0::"):
            for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
                found = root / line[3:].lstrip("/")
                if (root / "cgroup.controllers").is_file() and found.is_dir():
                    return found, "v2"
    return None


def _memory_cgroup(limit_bytes: int) -> tuple[Path, str] | None:
    """A fresh memory cgroup holding at most ``limit_bytes`` (swap included where it can be said), or None
    where this machine has none that this process may create."""
    own = _own_cgroup("memory")
    if own is None:
        return None
    parent, version = own
    files = (
        {"memory.max": limit_bytes, "memory.swap.max": 0}
        if version == "v2"
        else {"memory.limit_in_bytes": limit_bytes, "memory.memsw.limit_in_bytes": limit_bytes}
    )
    try:
        group = Path(tempfile.mkdtemp(prefix="spiel-sandbox-", dir=parent))
    except OSError:
        return None
    first = next(iter(files))
    try:
        for name, value in files.items():
            if (group / name).exists():
                (group / name).write_text(str(value))
        if not (group / first).exists() or int((group / first).read_text().split()[0]) > limit_bytes:
            raise OSError("no memory limit in this cgroup")
    except (OSError, ValueError):
        _remove_cgroup(group)
        return None
    return group, version


def _remove_cgroup(group: Path) -> None:
    try:
        os.rmdir(group)  # a cgroup directory goes with rmdir (its files are not real files)
    except OSError:
        pass


def run_check(
    program: str, checker: str, entry_point: str | None, limits: SandboxLimits = SandboxLimits()
) -> ExecResult:
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
        "nproc": capped_processes(limits),
        "tmpfs_mb": int(limits.tmpfs_mb),
        "isolation": limits.isolation,
        "allow_guard": bool(limits.allow_unsafe_guard),
        "uid": limits.uid if root else None,
        "gid": limits.gid if root else None,
    }
    trusted = {"checker": checker, "entry_point": entry_point}
    stdin = b"".join(_part(x) for x in (header, trusted))
    cgroup = _memory_cgroup(int(limits.total_memory_mb) << 20)
    cap = memory_cap(limits, cgroup)
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
        if cgroup is not None:  # before the header is sent: the child waits for it before starting anything
            try:
                (cgroup[0] / "cgroup.procs").write_text(str(proc.pid))
            except OSError:
                cap["cgroup"] = None
        proc.communicate(stdin, timeout=limits.timeout + limits.startup_grace)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        _kill_group(proc.pid)
        proc.wait()
        if cgroup is not None:
            _remove_cgroup(cgroup[0])
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
    info["memory_cap"] = cap
    if info.get("isolation") == "unavailable":
        return ExecResult(f"failed: sandbox unavailable ({limits.isolation})", info)
    verdict = lines[1] if len(lines) > 1 else None
    if verdict in ("passed", "timed out") or (verdict or "").removeprefix("failed: ") in FAILURES:
        return ExecResult(verdict, info)
    if timed_out or proc.returncode == 124:
        return ExecResult("timed out", info)
    return ExecResult("failed: sandbox error", info)


def memory_cap(limits: SandboxLimits, cgroup: tuple[Path, str] | None = None) -> dict:
    """Which caps bound the memory of one sandbox tree (recorded with the results): always the process cap
    (at most `processes` processes of `per_process_mb` each, so `bound_mb` in all), and a memory cgroup of
    `total_memory_mb` where this machine lets spiel create one."""
    processes = capped_processes(limits)
    return {
        "processes": processes,
        "per_process_mb": int(limits.memory_mb),
        "bound_mb": processes * int(limits.memory_mb),
        "cgroup": None if cgroup is None else f"{cgroup[1]}, {int(limits.total_memory_mb)} MiB",
    }


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


def default_workers(limits: SandboxLimits | None = None) -> int:
    """One per CPU (at most 16), and no more sandboxes than half this machine's memory holds at their cap."""
    workers = max(1, min(16, os.cpu_count() or 1))
    try:
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 20
    except (ValueError, OSError):
        return workers
    per_sandbox = (limits or SandboxLimits()).total_memory_mb
    return max(1, min(workers, memory_mb // 2 // per_sandbox))


def run_checks(
    cases: Sequence[tuple[str, str, str | None]],
    limits: SandboxLimits = SandboxLimits(),
    n_workers: int | None = None,
    progress: bool = False,
) -> list[ExecResult]:
    """`run_check` for many (program, checker, entry_point) cases in parallel worker threads."""
    n_workers = n_workers or default_workers(limits)
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
