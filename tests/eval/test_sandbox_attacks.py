"""A hostile tester's attacks on HumanEval scoring, each run as a real completion through the scorer.

Verdict attacks (forging a pass, passing with wrong code) must fail in every isolation mode this machine
has, guard mode included: the verdict is the checker's, in a process the completion never runs in.
Host attacks (reading host files, reaching a host socket, writing outside the working directory, other
processes) must fail and leave the host untouched in every namespace mode, and in guard mode where the
kernel has Landlock and seccomp; guard mode runs only when the user opts in (tests/eval/test_humaneval.py)."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from spiel.eval import _sandbox_child as child
from spiel.eval import sandbox as sandbox_module
from spiel.eval.humaneval import load_problems, score_completions
from spiel.eval.sandbox import FAILURES, SandboxLimits, run_check, run_checks, run_program

LIMITS = dict(timeout=5.0, memory_mb=256, nproc=16, fsize_mb=1)
PROBLEMS = {p["task_id"]: p for p in load_problems()}


def _mode_works(mode: str) -> bool:
    res = run_program("import math\n", SandboxLimits(isolation=mode, timeout=10, allow_unsafe_guard=True))
    return res.passed and (mode == "guard") == (res.isolation.get("isolation") == "guard")


NAMESPACE_MODES = [m for m in ("userns", "rootns") if _mode_works(m)]
VERDICT_MODES = NAMESPACE_MODES + (["guard"] if _mode_works("guard") else [])
# Guard mode confines the program only where the kernel has Landlock (ABI >= 6: files, TCP, signals) and
# seccomp; elsewhere it claims nothing about the host (and runs only by consent).
_GUARD = run_program(
    "pass\n", SandboxLimits(isolation="guard", timeout=10, allow_unsafe_guard=True)
).isolation
HOST_MODES = NAMESPACE_MODES + (["guard"] if _GUARD.get("landlock", 0) >= 6 and _GUARD.get("seccomp") else [])


def _limits(mode: str, **kw) -> SandboxLimits:
    return SandboxLimits(isolation=mode, allow_unsafe_guard=mode == "guard", **{**LIMITS, **kw})


def _score(task_id: str, completions: list[str], limits: SandboxLimits) -> list[dict]:
    out = score_completions([PROBLEMS[task_id]], [completions], limits, n_workers=2)
    for row in out["predictions"]:
        assert row["result"] in ("passed", "timed out") or row["result"].removeprefix("failed: ") in FAILURES
    return out["predictions"]


def test_the_machine_has_a_namespace_mode():
    assert NAMESPACE_MODES, "no namespace isolation on this machine: the host attacks below would not run"


# ------------------------------------------------------------------------------------------------ verdict

# HumanEval/0 (has_close_elements) and HumanEval/32 (find_zero); each completion is wrong or does nothing
# useful, and tries to get a pass anyway.
STACK_WALK = """\
    import os, sys
    frame = sys._getframe()
    while frame is not None:  # the reference's grader kept its secret in a caller's frame
        for name, value in list(frame.f_locals.items()) + list(frame.f_globals.items()):
            if isinstance(value, str) and len(value) == 32:
                for fd in range(3, 64):
                    try:
                        os.write(fd, f"passed {value}\\npassed\\n".encode())
                    except OSError:
                        pass
        frame = frame.f_back
    for fd in range(64):
        try:
            os.write(fd, b"passed\\n")
        except OSError:
            pass
    os._exit(0)
"""
GC_WALK = """\
    import gc, os
    for obj in gc.get_objects():  # any object of the grader: a request, a token, a pipe
        if isinstance(obj, dict):
            for value in obj.values():
                if isinstance(value, int) and 2 < value < 64:
                    try:
                        os.write(value, b"passed\\n")
                    except OSError:
                        pass
    os._exit(0)
"""
# A trace hook on the caller's frame (`check`) that swaps `candidate` for one whose results equal anything
# (trace functions write frame locals back); the first call's answer, True, happens to be right.
SETTRACE = """\
    import sys
    class Anything:
        def __eq__(self, other):
            return True
    def local(frame, event, arg):
        if event == "line" and "candidate" in frame.f_locals:
            frame.f_locals["candidate"] = lambda *args: Anything()
        return local
    sys.settrace(lambda frame, event, arg: None)  # tracing on, so the caller's f_trace gets line events
    sys._getframe(1).f_trace = local
    return True
"""
RIGGED_EQ = """\
    class Anything:
        def __eq__(self, other):
            return True
        __ne__ = lambda self, other: False
        __bool__ = lambda self: True
    return Anything()
"""
RIGGED_BOOL_SUBCLASS = """\
    class Yes(int):
        def __eq__(self, other):
            return True
    return Yes(1)
"""
MONKEYPATCH_BUILTINS = """\
    import builtins
    builtins.AssertionError = type("Nothing", (Exception,), {})
    builtins.abs = lambda x: 0
    return False
"""
# Writes into every pipe of the grader's processes: its ancestors up to the first that is not a sandbox
# process (the scorer itself) and their children (the checker). Confined to those so that a test run
# where the sandbox is broken sprays nothing into unrelated processes of the machine.
PROC_FD_FORGERY = """\
    import os
    def parent(pid):
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    def children(pid):
        try:
            return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
        except OSError:
            return []
    targets, pid = [], os.getpid()
    while pid > 1:
        pid = parent(pid)
        targets += [pid] + children(pid)
        if b"_sandbox_child" not in open(f"/proc/{pid}/cmdline", "rb").read():
            break
    for pid in set(targets) - {os.getpid()}:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:"):
                    w = os.open(f"/proc/{pid}/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK)
                    os.write(w, b"passed\\npassed\\n")
            except OSError:
                pass
    os._exit(0)
"""
VERDICT_ATTACKS = {
    "write 'passed' into others' pipes via /proc": ("HumanEval/0", PROC_FD_FORGERY),
    "stack-walk forgery": ("HumanEval/0", STACK_WALK),
    "gc walk forgery": ("HumanEval/0", GC_WALK),
    "sys.exit(0) in the call": ("HumanEval/0", "    import sys\n    sys.exit(0)\n"),
    "os._exit(0) in the call": ("HumanEval/0", "    import os\n    os._exit(0)\n"),
    "exit(0) while loading": ("HumanEval/0", "    return False\nimport sys\nsys.exit(0)\n"),
    "os._exit(0) while loading": ("HumanEval/0", "    return False\nimport os\nos._exit(0)\n"),
    "raise SystemExit": ("HumanEval/0", "    raise SystemExit(0)\n"),
    "math monkeypatch": ("HumanEval/32", "    import math\n    math.fabs = lambda x: 0.0\n    return 0.0\n"),
    "builtins monkeypatch": ("HumanEval/0", MONKEYPATCH_BUILTINS),
    "rigged __eq__": ("HumanEval/0", RIGGED_EQ),
    "rigged int subclass": ("HumanEval/0", RIGGED_BOOL_SUBCLASS),
    "settrace rewrites check's frame": ("HumanEval/0", SETTRACE),
    "kill the checker": (
        "HumanEval/0",
        "    import os, signal\n    for pid in range(1, 64):\n        try:\n"
        "            os.kill(pid, signal.SIGKILL)\n        except Exception:\n"
        "            pass\n    return False\n",
    ),
}


@pytest.mark.parametrize("mode", VERDICT_MODES)
def test_no_verdict_attack_passes(mode):
    names = list(VERDICT_ATTACKS)
    results = {}
    for task_id in {t for t, _ in VERDICT_ATTACKS.values()}:
        chosen = [n for n in names if VERDICT_ATTACKS[n][0] == task_id]
        rows = _score(task_id, [VERDICT_ATTACKS[n][1] for n in chosen], _limits(mode))
        results.update({n: r["result"] for n, r in zip(chosen, rows, strict=True)})
    assert not [n for n, status in results.items() if status == "passed"], results
    # sanity: the same harness passes the real solutions in this mode
    for task_id in ("HumanEval/0", "HumanEval/32"):
        assert _score(task_id, [PROBLEMS[task_id]["canonical_solution"]], _limits(mode))[0]["passed"]


def test_the_verdict_comes_from_the_checker_not_from_the_program_ending():
    """The same rigged value passes when the comparison runs where the value lives (what the reference
    harness did), and fails when the checker compares a literal copy."""
    rigged = "class Anything:\n    def __eq__(self, other):\n        return True\ndef f():\n    return Anything()\n"
    in_program = run_program(rigged + "assert f() == 42\n", SandboxLimits(timeout=10))
    assert in_program.passed
    checked = run_check(
        rigged, "def check(candidate):\n    assert candidate() == 42\n", "f", SandboxLimits(timeout=10)
    )
    assert checked.status == "failed: unsupported value"


def test_the_program_never_holds_the_checker_code():
    """The trusted part travels on stdin past the program: its memory holds no trace of the checker."""
    secret = "SECRET-" + secrets.token_hex(16)
    program = (
        "import re\n"
        "def f():\n"
        "    pattern = re.compile(rb'SECRET-[0-9a-f]{32}')\n"
        "    mem = open('/proc/self/mem', 'rb', buffering=0)\n"
        "    for line in open('/proc/self/maps'):\n"
        "        addr, perms = line.split()[:2]\n"
        "        if not perms.startswith('r'):\n"
        "            continue\n"
        "        start, end = (int(x, 16) for x in addr.split('-'))\n"
        "        try:\n"
        "            mem.seek(start)\n"
        "            found = pattern.search(mem.read(end - start))\n"
        "        except (OSError, OverflowError, ValueError):\n"
        "            continue\n"
        "        if found:\n"
        "            return found.group().decode()\n"
        "    return 'not found'\n"
    )
    checker = f"def check(candidate):\n    assert candidate() == {secret!r}\n"
    for mode in NAMESPACE_MODES:  # in guard mode the program is not dumpable: it cannot even read its own
        res = run_check(program, checker, "f", _limits(mode, memory_mb=512))
        assert res.status == "failed: AssertionError", (mode, res.status)
    # the search itself works: it finds a secret that is in the program's memory
    planted = program.replace("def f():", f"PLANTED = {secret!r}\ndef f():")
    assert run_check(planted, checker, "f", SandboxLimits(timeout=10)).passed


def test_a_checker_that_swallows_errors_still_fails_a_bad_reply():
    checker = (
        "def check(candidate):\n    try:\n        assert candidate() == 1\n"
        "    except BaseException:\n        pass\n"
    )
    rigged = "def f():\n    return object()\n"
    assert run_check(rigged, checker, "f", SandboxLimits(timeout=10)).status == "failed: unsupported value"
    slow = "import time\ndef f():\n    time.sleep(30)\n"
    limits = SandboxLimits(timeout=10, call_timeout=0.5)
    assert run_check(slow, checker, "f", limits).status == "timed out"
    honest = "def f():\n    return 2\n"
    assert run_check(
        honest, checker, "f", limits
    ).passed  # the swallowed AssertionError is the checker's call


@pytest.mark.parametrize("name", ["StopIteration", "StopAsyncIteration", "GeneratorExit"])
def test_an_exception_that_ends_an_iteration_cannot_forge_a_pass(name):
    """Re-raised as itself, StopIteration would end `all(map(candidate, ...))` early: a pass for a program
    that only raises. It fails, also under a checker that catches everything."""
    program = f"def f(x):\n    raise {name}\n"
    iterating = "def check(candidate):\n    assert all(map(candidate, [1, 2, 3]))\n"
    swallowing = (
        "def check(candidate):\n    try:\n        candidate(1)\n    except BaseException:\n        pass\n"
    )
    for checker in (iterating, swallowing):
        assert run_check(program, checker, "f", SandboxLimits(timeout=10)).status == f"failed: {name}"
    assert run_check("def f(x):\n    return x\n", iterating, "f", SandboxLimits(timeout=10)).passed


# ------------------------------------------------------------------------------------------------ host


@pytest.fixture
def unix_listener():
    """A Unix-domain socket anyone may connect to, in the host's /tmp, that records what it receives."""
    folder = tempfile.mkdtemp(prefix="spiel-sock-", dir="/tmp")
    os.chmod(folder, 0o777)
    path = os.path.join(folder, "listen.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    os.chmod(path, 0o777)
    server.listen(4)
    server.settimeout(0.2)
    received, stop = [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                received.append(conn.recv(100) or b"<connected>")
                conn.close()
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path, received
    stop.set()
    thread.join(2)
    server.close()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def sibling():
    """A process of this machine with a secret in its environment."""
    secret = "SIBLING-" + secrets.token_hex(8)
    proc = subprocess.Popen(["sleep", "60"], env={"PATH": "/usr/bin:/bin", "SPIEL_SECRET": secret})
    yield proc.pid, secret
    proc.kill()
    proc.wait()


def _reader(expr: str) -> str:
    return f"def f():\n    return {expr}\n"


def test_the_unix_socket_fixture_is_reachable_without_the_sandbox(unix_listener):
    path, received = unix_listener
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall(b"hello")
    s.close()
    for _ in range(50):
        if received:
            break
        threading.Event().wait(0.05)
    assert received == [b"hello"]
    received.clear()


@pytest.mark.parametrize("mode", HOST_MODES)
def test_no_host_attack_reads_or_reaches_the_host(mode, victim, unix_listener, sibling):
    sock_path, received = unix_listener
    sibling_pid, sibling_secret = sibling
    project_file = Path(__file__).resolve()
    connect = (
        "import socket\ndef f():\n    s = socket.socket(socket.AF_UNIX)\n"
        f"    s.connect({sock_path!r})\n    s.sendall(b'leak')\n    return 'sent'\n"
    )
    connect_raw = (
        "import _socket\ndef f():\n    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)\n"
        f"    s.connect({sock_path!r})\n    s.send(b'leak')\n    return 'sent'\n"
    )
    connect_loaded = (  # the guard blocks `import _socket`; load the extension module by hand instead
        "import glob, importlib.machinery, importlib.util, sys\ndef f():\n"
        "    path = [p for d in sys.path for p in glob.glob(d + '/_socket*.so')][0]\n"
        "    spec = importlib.util.spec_from_file_location('_socket', path, "
        "loader=importlib.machinery.ExtensionFileLoader('_socket', path))\n"
        "    m = importlib.util.module_from_spec(spec)\n    s = m.socket(m.AF_UNIX, m.SOCK_STREAM)\n"
        f"    s.connect({sock_path!r})\n    s.send(b'leak')\n    return 'sent'\n"
    )
    environ = (
        "import os\ndef f():\n    found = ''\n    for pid in os.listdir('/proc'):\n        try:\n"
        "            found += open(f'/proc/{pid}/environ', 'rb').read().decode(errors='replace')\n"
        "        except Exception:\n            pass\n"
        f"    try:\n        found += open('/proc/{sibling_pid}/environ', 'rb').read().decode()\n"
        "    except Exception:\n        pass\n    return found\n"
    )
    attacks = {  # name: (program, checker that passes only if the attack worked)
        "read /etc/passwd": (
            _reader("open('/etc/passwd').read()"),
            "def check(c):\n    assert 'root:' in c()\n",
        ),
        "read a project file": (
            _reader(f"open({str(project_file)!r}).read()"),
            "def check(c):\n    assert 'def test_no_host_attack_reads_or_reaches_the_host' in c()\n",
        ),
        "list the host's /tmp": (
            _reader("__import__('os').listdir('/tmp')"),
            f"def check(c):\n    assert {Path(sock_path).parent.name!r} in c()\n",
        ),
        "list a home directory": (
            _reader("__import__('os').listdir('/root') + __import__('os').listdir('/home')"),
            "def check(c):\n    c()\n",
        ),
        "connect to a host Unix socket": (connect, "def check(c):\n    assert c() == 'sent'\n"),
        "connect with _socket": (connect_raw, "def check(c):\n    assert c() == 'sent'\n"),
        "connect with a hand-loaded _socket": (connect_loaded, "def check(c):\n    assert c() == 'sent'\n"),
        "TCP to localhost": (
            _reader("__import__('socket').create_connection(('127.0.0.1', 22), timeout=1) and 1"),
            "def check(c):\n    c()\n",
        ),
        "write outside the work dir": (
            _reader(f"open({str(victim)!r}, 'w').write('gone')"),
            "def check(c):\n    c()\n",
        ),
        "posix.open write": (
            _reader(f"__import__('posix').write(__import__('posix').open({str(victim)!r}, 1), b'gone')"),
            "def check(c):\n    c()\n",
        ),
        "_io.FileIO write": (
            _reader(f"__import__('_io').FileIO({str(victim)!r}, 'w').write(b'gone')"),
            "def check(c):\n    c()\n",
        ),
        "remove outside file": (
            _reader(f"__import__('os').remove({str(victim)!r})"),
            "def check(c):\n    c()\n",
        ),
        "write to /": (_reader("open('/evil', 'w').write('x')"), "def check(c):\n    c()\n"),
        "write the stdlib": (_reader(f"open({os.__file__!r}, 'a').write('#')"), "def check(c):\n    c()\n"),
        "sibling's /proc environ": (environ, f"def check(c):\n    assert {sibling_secret!r} in c()\n"),
    }
    names = list(attacks)
    results = run_checks([(*attacks[n], "f") for n in names], _limits(mode), n_workers=2)
    statuses = {n: r.status for n, r in zip(names, results, strict=True)}
    assert not [n for n, s in statuses.items() if s == "passed"], statuses
    assert victim.read_text() == "keep me"
    assert received == []
    for status in statuses.values():  # only fixed categories come back, never the program's text
        assert status.removeprefix("failed: ") in FAILURES or status == "timed out"
    # sanity: the working directory itself is writable, and reading inside the sandbox works
    ok = run_check(
        "def f():\n    open('scratch', 'w').write('x')\n    return open('scratch').read()\n",
        "def check(c):\n    assert c() == 'x'\n",
        "f",
        _limits(mode),
    )
    assert ok.passed, ok.status


@pytest.mark.parametrize("mode", NAMESPACE_MODES)
def test_the_sandbox_root_holds_only_the_runtime(mode):
    program = (
        "import os, sys\ndef f():\n    out = []\n    for d, subs, files in os.walk('/'):\n"
        "        if d.startswith(('/proc', sys.base_prefix)):\n            subs[:] = []\n"
        "            continue\n        out += [os.path.join(d, x) for x in files]\n    return sorted(out)\n"
    )
    # every file outside /proc and the interpreter's prefix: the devices and the shared-library directories
    checker = (
        "def check(c):\n    files = c()\n    allowed = ('/dev/null', '/dev/zero', '/dev/urandom')\n"
        "    bad = [f for f in files if f not in allowed and '/lib' not in f]\n    assert not bad, bad[:5]\n"
        "    assert not any(f.startswith(('/etc', '/home', '/root', '/tmp', '/run', '/var', '/work/')) "
        "for f in files)\n"
    )
    res = run_check(program, checker, "f", _limits(mode))
    assert res.passed, res.status
    # and the mount table: the host's root is gone (unmounted), not merely covered
    mounts = "def f():\n    return [line.split()[4] for line in open('/proc/self/mountinfo')]\n"
    checker = (
        "def check(c):\n    points = c()\n    assert points.count('/') == 1, points\n"
        "    fixed = {'/', '/proc', '/work', '/dev/null', '/dev/zero', '/dev/urandom'}\n"
        "    assert all(p in fixed or '/lib' in p for p in points), points\n"
    )
    res = run_check(mounts, checker, "f", _limits(mode))
    assert res.passed, res.status


def test_the_literal_codec_accepts_only_plain_literals():
    value = [1, -2.5, "s", b"b", None, True, (1,), (), {1, 2}, set(), {"k": [1e300, -0.0]}, 2 + 3j, 10**30]
    assert child._decode(child._encode(value).encode()) == value
    assert child._decode(child._encode(float("inf")).encode()) == float("inf")
    for bad in (object(), type("I", (int,), {})(1), frozenset(), [lambda: 0], float("nan")):
        with pytest.raises((TypeError, ValueError)):
            child._decode(child._encode(bad).encode())
    for payload in (b"__import__('os').system('x')", b"print(1)", b"[1, f(2)]", b"{1: x}", b"\xff"):
        with pytest.raises(ValueError):
            child._decode(payload)
    with pytest.raises(ValueError, match="too large"):
        child._send(-1, "x" * (child.MAX_MESSAGE + 1))


def test_a_forged_oversized_frame_is_refused_unread():
    """The program writes its own frame header announcing 64 MiB: the checker refuses it at once rather
    than reading (and waiting for) it."""
    program = (
        "import os, stat, fcntl\ndef f():\n    for fd in range(3, 64):\n        try:\n"
        "            if stat.S_ISFIFO(os.fstat(fd).st_mode) and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_WRONLY:\n"
        "                os.write(fd, (64 << 20).to_bytes(4, 'big') + b'[1')\n"
        "        except OSError:\n            pass\n    return 1\n"
    )
    res = run_check(program, "def check(c):\n    assert c() == 1\n", "f", SandboxLimits(timeout=5))
    assert res.status == "failed: unsupported value"


def test_the_host_accepts_only_fixed_categories(tmp_path, monkeypatch):
    """Even a verdict line that is not one of the fixed categories (here from a stand-in bootstrap) never
    reaches the results as text."""
    fake = tmp_path / "fake_child.py"
    fake.write_text(
        "import ast, os\nn = int.from_bytes(os.read(0, 8), 'big')\nreq = ast.literal_eval(os.read(0, n).decode())\n"
        "os.write(req['result_fd'], b'{\"isolation\": \"namespaces\"}\\nfailed: root:x:0:0\\n')\n"
    )
    monkeypatch.setattr(sandbox_module, "CHILD", fake)
    assert run_program("pass\n", SandboxLimits(timeout=10)).status == "failed: sandbox error"
    fake.write_text(fake.read_text().replace("failed: root:x:0:0", "failed: AssertionError"))
    assert run_program("pass\n", SandboxLimits(timeout=10)).status == "failed: AssertionError"


def test_an_oversized_reply_fails_and_a_failure_carries_no_text():
    big = run_check(
        "def f():\n    return 'x' * (2 << 20)\n", "def check(c):\n    c()\n", "f", SandboxLimits(timeout=10)
    )
    assert big.status == "failed: unsupported value"
    leak = run_check(
        "class Leak(Exception):\n    pass\ndef f():\n    raise Leak('root:x:0:0')\n",
        "def check(c):\n    c()\n",
        "f",
        SandboxLimits(timeout=10),
    )
    assert leak.status == "failed: Exception"
    named = run_check(
        "def f():\n    raise ValueError('root:x:0:0')\n",
        "def check(c):\n    c()\n",
        "f",
        SandboxLimits(timeout=10),
    )
    assert named.status == "failed: ValueError"
    exits = run_check(
        "import sys\ndef f():\n    sys.exit(0)\n", "def check(c):\n    c()\n", "f", SandboxLimits(timeout=10)
    )
    assert exits.status == "failed: SystemExit"
    assert not re.search("root|Leak", big.status + leak.status + named.status)


def test_a_program_killed_at_the_deadline_is_a_timeout_not_an_ended_program(monkeypatch):
    """At the deadline the supervisor kills the program; a checker that sees that end before its own
    timer fires (a loaded machine) reports the timeout, while an earlier end stays "program ended"."""
    import time

    def ended(fd, deadline):
        raise child._ProgramEnded

    monkeypatch.setattr(child, "_recv", ended)
    trusted = {"checker": "def check(candidate):\n    candidate()\n", "entry_point": "f"}
    now = time.monotonic()
    assert child._run_checker(trusted, -1, -1, 1.0, deadline=now - 0.01) == "timed out"
    assert child._run_checker(trusted, -1, -1, 1.0, deadline=now + 60) == "failed: program ended"
