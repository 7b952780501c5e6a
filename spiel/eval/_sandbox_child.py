"""Bootstrap that checks ONE untrusted Python program; started by `spiel.eval.sandbox` as
`python -I -S -B _sandbox_child.py`. Standard library only (it must not import spiel or site-packages).

stdin: an 8-byte length, a header (a Python literal: the untrusted program, limits, isolation), then the
trusted part (the same way: the checker code and the entry point); the lines back to the caller are
literals too (no `json`: its import would be a tenth of the start-up). The header is read here; the
trusted part is read only by the checker process, so no process the program runs in ever holds it.

Processes (namespace modes):

    bootstrap (outside) --waits--> supervisor S (PID 1 of a new PID namespace, trusted)
                                     |-- checker C: runs the trusted checker code; its only view of the
                                     |   program is `candidate`, a proxy that sends the arguments over a
                                     |   pipe and receives the result as a literal; C alone writes the verdict
                                     `-- program P (PID 1 of a nested PID namespace): runs the program, then
                                         serves calls of the entry point over the pipes

The verdict is decided in C, which P cannot reach: C is non-dumpable (no ptrace, no /proc/<pid>/mem or
fd), invisible in P's /proc (hidepid) and outside P's PID namespace (P cannot signal it), and P never holds
the verdict pipe. Results cross as literals only (numbers, strings, bytes, bools, None and lists, tuples,
dicts, sets of them), size-capped, parsed with `ast.literal_eval`; anything else fails. Monkeypatched
modules, rigged `__eq__`, trace hooks, exits and stack walks therefore act on P alone.

Isolation (namespace modes): new user (or, as root where user namespaces are off, none: "rootns"),
mount, PID, network (no interfaces up), IPC and UTS namespaces; the root is a fresh read-only tmpfs
holding only the interpreter's standard library and the shared libraries it loads (bind-mounted
read-only), /dev/null, /dev/zero, /dev/urandom, a /proc that shows only the program's own processes and
a size-limited tmpfs working directory /work; the host's root is unmounted (pivot_root). P and C run with
no capabilities (as `nobody` outside when the caller is root), under rlimits, and S SIGKILLs everything
at the deadline; when S exits the kernel kills whatever is left in the namespace.

Guard mode (no namespaces; only with the caller's explicit consent): the same process split and rlimits,
`nobody` when the caller is root, a Python-level guard and, where the kernel has them, Landlock (read
only the interpreter's directories, write only the working directory; with ABI >= 4 no TCP, >= 6 no
signals or abstract sockets outside) and a seccomp filter that refuses socket() and io_uring_setup().
The program still sees the host's process list and directory names, and without Landlock/seccomp
nothing of the host is protected.
"""

from __future__ import annotations

import ast
import builtins
import ctypes
import math
import os
import resource
import select
import signal
import sys
import time

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
MNT_DETACH = 2
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 1, 2, 4
SYS_MOUNT_SETATTR = 442  # the same number on every architecture (syscalls added after 5.x are unified)
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
SYS_CAPSET = {"x86_64": 126, "aarch64": 91}
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = (
    444,
    445,
    446,
)  # unified numbers
LANDLOCK_CREATE_RULESET_VERSION, LANDLOCK_RULE_PATH_BENEATH = 1, 1
LL_EXECUTE, LL_WRITE_FILE, LL_READ_FILE, LL_READ_DIR = 1, 2, 4, 8
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
# (audit arch, socket, io_uring_setup) syscall numbers
SECCOMP_ARCH = {"x86_64": (0xC000003E, 41, 425), "aarch64": (0xC00000B7, 198, 425)}

EXIT_TIMEOUT = 124
MAX_MESSAGE = 1 << 20  # bytes of one literal crossing between checker and program
WORKDIR = "/work"
DEVICES = ("null", "zero", "urandom")
# Every builtin exception name: the only free part of a failure category (anything else is "Exception").
EXCEPTION_NAMES = frozenset(
    n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, BaseException)
)

_libc = ctypes.CDLL(None, use_errno=True)


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return s.encode() if s is not None else None

    _check(_libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _set_mount_attr(path: str, attrs: int, recursive: bool) -> None:
    attr = _MountAttr(attrs, 0, 0, 0)
    flags = AT_RECURSIVE if recursive else 0
    ret = _libc.syscall(
        SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), flags, ctypes.byref(attr), ctypes.sizeof(attr)
    )
    _check(ret, f"mount_setattr {path}")


def _syscall_nr(table: dict, name: str) -> int:
    nr = table.get(os.uname().machine)
    if nr is None:
        raise OSError(f"{name}: unknown syscall number on {os.uname().machine}")
    return nr


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _read_exact(fd: int, n: int) -> bytes:
    chunks = []
    while n > 0:
        chunk = os.read(fd, min(n, 1 << 16))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _read_part(fd: int) -> dict:
    return ast.literal_eval(_read_exact(fd, int.from_bytes(_read_exact(fd, 8), "big")).decode())


# ---------------------------------------------------------------------------------------------- namespaces


def _unshare_userns(outside_uid: int, outside_gid: int) -> bool:
    """New user namespace (+ the others) in which uid/gid 0 map to the given outside ids.

    A process may map only its own ids from inside; mapping root to another uid needs CAP_SETUID in the
    parent namespace, so then a helper forked beforehand (still outside) writes the maps.
    """
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    if outside_uid == os.geteuid() and outside_gid == os.getegid():
        if _libc.unshare(flags) != 0:
            return False
        try:
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"0 {outside_uid} 1")
            _write("/proc/self/gid_map", f"0 {outside_gid} 1")
        except OSError:
            return False
        return True
    me = os.getpid()
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    helper = os.fork()
    if helper == 0:
        os.close(go_w)
        os.close(done_r)
        ok = b"0"
        if os.read(go_r, 1) == b"1":
            try:
                _write(f"/proc/{me}/uid_map", f"0 {outside_uid} 1")
                _write(f"/proc/{me}/gid_map", f"0 {outside_gid} 1")
                ok = b"1"
            except OSError:
                pass
        os.write(done_w, ok)
        os._exit(0)
    os.close(go_r)
    os.close(done_w)
    unshared = _libc.unshare(flags) == 0
    os.write(go_w, b"1" if unshared else b"0")
    ok = os.read(done_r, 1) == b"1"
    os.waitpid(helper, 0)
    for fd in (go_w, done_r):
        os.close(fd)
    return unshared and ok


def _unshare_root() -> bool:
    """As root without a user namespace (where those are disabled)."""
    return _libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS) == 0


def _build_root(new_root: str, binds: dict[str, int], masks: list[str], tmpfs_mb: int) -> None:
    """Make `new_root` a read-only tmpfs with only `binds` (path: an O_PATH descriptor opened while the
    path was reachable; read-only, at the same path), a few devices, /proc and a writable /work, then
    pivot into it and drop the host's root entirely."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", new_root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for path, fd in binds.items():
        target = new_root + path
        os.makedirs(target, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
        os.close(fd)
        _set_mount_attr(target, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, recursive=True)
    for path in masks:  # e.g. the base interpreter's site-packages: an empty read-only directory instead
        if os.path.isdir(new_root + path):
            _mount("tmpfs", new_root + path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k")
    os.mkdir(new_root + "/dev")
    for name in DEVICES:
        target = f"{new_root}/dev/{name}"
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o666))
        _mount(f"/dev/{name}", target, None, MS_BIND)
        _set_mount_attr(target, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, recursive=False)
    os.mkdir(new_root + "/proc")
    # hidepid=invisible: a process sees only the processes it could ptrace (not S or C, which are
    # non-dumpable); subset=pid: none of the host's kernel and hardware files.
    _mount(
        "proc", new_root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=invisible,subset=pid"
    )
    os.mkdir(new_root + WORKDIR)
    _mount("tmpfs", new_root + WORKDIR, "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmpfs_mb}m,mode=0777")
    _set_mount_attr(new_root, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, recursive=False)
    os.chdir(new_root)
    _check(_libc.syscall(_syscall_nr(SYS_PIVOT_ROOT, "pivot_root"), b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir(WORKDIR)


# ---------------------------------------------------------------------------------------------- identity


def _drop_identity(mode: str | None, uid: int | None, gid: int | None) -> None:
    """No capabilities, no new privileges; as `uid` when given (root callers)."""
    if uid is not None and mode != "userns":
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)  # also clears every capability
    _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if mode == "userns":
        # Drop every capability of the namespace's root so the mounts cannot be undone: capset(v3 header,
        # zeroed data) clears the effective, permitted and inheritable sets.
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)
        data = (ctypes.c_uint32 * 6)()
        _check(
            _libc.syscall(_syscall_nr(SYS_CAPSET, "capset"), ctypes.byref(header), ctypes.byref(data)),
            "capset",
        )


class _LandlockRuleset(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _LandlockPathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0: none)."""
    return max(0, _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION))


def _landlock(read_dirs: list[str], write_dir: str) -> None:
    """Guard mode: confine this process (Landlock) to reading `read_dirs`, reading and writing `write_dir`
    and /dev/null; with ABI >= 4 no TCP, with ABI >= 6 no abstract Unix sockets and no signals outside."""
    abi = landlock_abi()
    fs = (
        (1 << 13) - 1
        | (1 << 13 if abi >= 2 else 0)
        | (1 << 14 if abi >= 3 else 0)
        | (1 << 15 if abi >= 5 else 0)
    )
    attr = _LandlockRuleset(fs, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    file_rights = fs & (LL_EXECUTE | LL_WRITE_FILE | LL_READ_FILE | (1 << 14) | (1 << 15))
    rules = [(p, LL_EXECUTE | LL_READ_FILE | LL_READ_DIR) for p in read_dirs]
    rules += [(write_dir, fs), ("/dev/null", file_rights & (LL_READ_FILE | LL_WRITE_FILE))]
    for path, access in rules:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        rule = _LandlockPathBeneath(access, fd)
        ret = _libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0)
        os.close(fd)
        _check(ret, f"landlock_add_rule {path}")
    _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    _check(_libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
    os.close(ruleset)


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def _no_sockets() -> None:
    """Guard mode: a seccomp filter that fails socket() and io_uring_setup() with EPERM (Landlock does not
    cover connecting to a Unix socket by path); any other syscall ABI of the machine fails entirely."""
    arch, nr_socket, nr_io_uring = SECCOMP_ARCH[os.uname().machine]
    ld_w_abs, jeq_k, jge_k, ret_k = 0x20, 0x15, 0x35, 0x06
    deny = SECCOMP_RET_ERRNO | 1  # EPERM
    program = [
        (ld_w_abs, 0, 0, 4),  # seccomp_data.arch
        (jeq_k, 1, 0, arch),
        (ret_k, 0, 0, deny),
        (ld_w_abs, 0, 0, 0),  # seccomp_data.nr
        (jge_k, 3, 0, 0x40000000),  # x32 numbers
        (jeq_k, 2, 0, nr_socket),
        (jeq_k, 1, 0, nr_io_uring),
        (ret_k, 0, 0, SECCOMP_RET_ALLOW),
        (ret_k, 0, 0, deny),
    ]
    filters = (_SockFilter * len(program))(*[_SockFilter(*ins) for ins in program])
    fprog = _SockFprog(len(program), filters)
    _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp")


def _keep_stdlib_reachable() -> None:
    """Guard mode as root, before becoming `nobody`: import from the interpreter's prefix through a
    descriptor opened now, as `nobody` may not reach the prefix itself (e.g. /root/.pyenv)."""
    prefix = os.path.realpath(sys.base_prefix)
    via = f"/proc/self/fd/{os.open(prefix, os.O_PATH | os.O_DIRECTORY)}"

    def moved(p: str) -> str:
        real = os.path.realpath(p)
        return via + real[len(prefix) :] if real == prefix or real.startswith(prefix + os.sep) else p

    sys.path[:] = [moved(p) for p in sys.path]
    for module in list(sys.modules.values()):  # packages already imported look up submodules here
        search = getattr(module, "__path__", None)
        if isinstance(search, list):
            search[:] = [moved(p) for p in search]
    sys.path_importer_cache.clear()


def _set_limits(req: dict) -> None:
    def lim(which, value):
        resource.setrlimit(which, (int(value), int(value)))

    lim(resource.RLIMIT_CORE, 0)
    lim(resource.RLIMIT_AS, req["memory_bytes"])
    lim(resource.RLIMIT_DATA, req["memory_bytes"])
    lim(resource.RLIMIT_CPU, req["cpu_seconds"])
    lim(resource.RLIMIT_FSIZE, req["fsize_bytes"])
    lim(resource.RLIMIT_NOFILE, req["nofile"])
    lim(resource.RLIMIT_NPROC, req["nproc"])


def _guard() -> None:
    """Guard mode only: disable the obvious ways to delete, spawn and connect. NOT a security boundary."""
    import shutil
    import subprocess

    for name in (
        "kill",
        "killpg",
        "system",
        "putenv",
        "remove",
        "removedirs",
        "rmdir",
        "unlink",
        "rename",
        "renames",
        "replace",
        "truncate",
        "ftruncate",
        "fork",
        "forkpty",
        "setuid",
        "chmod",
        "chown",
        "lchown",
        "link",
        "symlink",
        "execv",
        "execve",
        "execvp",
        "execvpe",
        "spawnv",
        "spawnve",
        "posix_spawn",
        "posix_spawnp",
        "chdir",
        "fchdir",
        "chroot",
    ):
        if hasattr(os, name):
            setattr(os, name, None)
    shutil.rmtree = shutil.move = shutil.chown = None
    subprocess.Popen = None
    for name in ("ctypes", "_ctypes", "multiprocessing", "resource", "socket", "_socket"):
        sys.modules[name] = None  # type: ignore[assignment]


# ---------------------------------------------------------------------------------------------- literals


def _encode(value) -> str:
    """`repr` of a plain literal (exact builtin types only); raises TypeError for anything else."""
    kind = type(value)
    if value is None or kind in (bool, int, str, bytes, complex):
        return repr(value)
    if kind is float:
        return (
            repr(value)
            if math.isfinite(value)
            else ("1e999" if value > 0 else "-1e999" if value < 0 else "nan")
        )
    if kind is list:
        return "[" + ", ".join(map(_encode, value)) + "]"
    if kind is tuple:
        return "(" + "".join(_encode(v) + ", " for v in value) + ")"
    if kind is set:
        return "{" + ", ".join(map(_encode, value)) + "}" if value else "set()"
    if kind is dict:
        return "{" + ", ".join(f"{_encode(k)}: {_encode(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"not a plain literal: {kind.__name__}")


def _decode(payload: bytes):
    """Parse a message with the literal-only parser; raises ValueError for anything else."""
    try:
        return ast.literal_eval(payload.decode("utf-8"))
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError, UnicodeDecodeError) as e:
        raise ValueError("not a literal") from e


def _send(fd: int, text: str) -> None:
    data = text.encode("utf-8")
    if len(data) > MAX_MESSAGE:
        raise ValueError("message too large")
    data = len(data).to_bytes(4, "big") + data
    while data:
        data = data[os.write(fd, data) :]


class _Timeout(Exception):
    pass


class _Unsupported(Exception):
    pass


class _ProgramEnded(Exception):
    pass


# Exceptions that end an iteration (or a generator) instead of failing: re-raised in the checker,
# `all(map(candidate, xs))` would stop early and pass. They come back as this, which nothing iterates.
ITERATION_ENDERS = frozenset({"StopIteration", "StopAsyncIteration", "GeneratorExit"})


class _IterationEnder(Exception):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


def _recv(fd: int, deadline: float) -> bytes:
    """One message, or _Timeout / _ProgramEnded / _Unsupported (over the size cap)."""

    def exact(n: int) -> bytes:
        out = b""
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise _Timeout
            chunk = os.read(fd, n - len(out))
            if not chunk:
                raise _ProgramEnded
            out += chunk
        return out

    size = int.from_bytes(exact(4), "big")
    if size > MAX_MESSAGE:
        raise _Unsupported
    return exact(size)


# ---------------------------------------------------------------------------------------------- program


def _serve_program(req: dict, calls: int, replies: int) -> None:
    """In P: run the untrusted program, report ("ready",) or ("error", name), then answer calls."""
    os.environ.clear()
    os.environ.update(
        {
            "PATH": "/usr/bin:/bin",
            "HOME": WORKDIR if req["mode"] else os.getcwd(),
            "TMPDIR": WORKDIR if req["mode"] else os.getcwd(),
            "LANG": "C.UTF-8",
            "OMP_NUM_THREADS": "1",
        }
    )
    program, entry_point, req["program"] = req["program"], req["entry_point"], None
    scope: dict = {"__name__": "__main__"}
    try:
        code = compile(program, "<program>", "exec")
        if not req["mode"]:
            _guard()
        exec(code, scope)  # noqa: S102 - running untrusted code is this module's purpose
        function = scope.get(entry_point) if entry_point else None
        if entry_point and not callable(function):
            raise NameError(entry_point)
    except BaseException as e:  # noqa: BLE001 - every failure of the program is a reported category
        _send(replies, _encode(("error", type(e).__name__)))
        os._exit(1)
    _send(replies, _encode(("ready",)))
    while True:
        try:
            args = _decode(_read_exact(calls, int.from_bytes(_read_exact(calls, 4), "big")))
        except EOFError:
            os._exit(0)
        try:
            result = function(*args)
        except BaseException as e:  # noqa: BLE001
            _send(replies, _encode(("raise", type(e).__name__)))
            continue
        try:
            _send(replies, _encode(("ok", result)))
        except (TypeError, ValueError, RecursionError):  # not a plain literal, or over the size cap
            _send(replies, _encode(("unsupported",)))


# ---------------------------------------------------------------------------------------------- checker


class _Candidate:
    """The checker's stand-in for the program's entry point: arguments out, a literal back.

    A timeout, an ended program or an unsupported value is also remembered, so a checker that catches
    every exception cannot turn it into a pass."""

    def __init__(self, calls: int, replies: int, call_timeout: float, deadline: float):
        self.calls, self.replies = calls, replies
        self.call_timeout, self.deadline = call_timeout, deadline
        self.failure: BaseException | None = None

    def __call__(self, *args):
        if self.failure is not None:
            raise self.failure
        try:
            reply = self._call(args)
        except (_Timeout, _ProgramEnded, _Unsupported) as e:
            self.failure = e
            raise
        if reply[0] == "raise":
            if reply[1] in ITERATION_ENDERS:  # remembered: a checker that catches it still fails
                self.failure = _IterationEnder(reply[1])
                raise self.failure
            raise _exception_class(reply[1])()
        return reply[1]

    def _call(self, args: tuple) -> tuple:
        try:
            _send(self.calls, _encode(args))
        except (TypeError, ValueError, RecursionError) as e:
            raise _Unsupported from e
        except BrokenPipeError as e:
            raise _ProgramEnded from e
        reply = _decode_reply(_recv(self.replies, min(self.deadline, time.monotonic() + self.call_timeout)))
        if len(reply) == 2 and (reply[0] == "ok" or (reply[0] == "raise" and isinstance(reply[1], str))):
            return reply
        raise _Unsupported


def _decode_reply(payload: bytes) -> tuple:
    try:
        reply = _decode(payload)
    except ValueError as e:
        raise _Unsupported from e
    if (
        not isinstance(reply, tuple)
        or not reply
        or reply[0] not in ("ok", "raise", "ready", "error", "unsupported")
    ):
        raise _Unsupported
    return reply


def _exception_class(name: str) -> type:
    """The builtin exception class of that name (SystemExit included); any other name is `Exception`."""
    return getattr(builtins, name) if name in EXCEPTION_NAMES else Exception


def _category(name: str) -> str:
    return f"failed: {name if name in EXCEPTION_NAMES else 'Exception'}"


def _run_checker(trusted: dict, calls: int, replies: int, call_timeout: float, deadline: float) -> str:
    """In C: wait for the program to be ready, run the trusted checker against the proxy; the verdict."""
    try:
        first = _decode_reply(_recv(replies, min(deadline, time.monotonic() + call_timeout)))
        if first[0] == "error" and len(first) == 2 and isinstance(first[1], str):
            return _category(first[1])
        if first != ("ready",):
            return "failed: unsupported value"
        candidate = _Candidate(calls, replies, call_timeout, deadline)
        scope: dict = {"__name__": "__checker__"}
        exec(compile(trusted["checker"], "<checker>", "exec"), scope)  # noqa: S102 - trusted code
        if trusted["entry_point"]:
            scope[trusted["entry_point"]] = candidate
        scope["check"](candidate)
        if candidate.failure is not None:
            raise candidate.failure
        return "passed"
    except _Timeout:
        return "timed out"
    except _ProgramEnded:  # at the deadline the supervisor kills the program: that end is the timeout
        return "timed out" if time.monotonic() >= deadline else "failed: program ended"
    except _Unsupported:
        return "failed: unsupported value"
    except _IterationEnder as e:
        return _category(e.name)
    except BaseException as e:  # noqa: BLE001 - the checker's assertion (or the program's re-raised error)
        return _category(type(e).__name__)


# ---------------------------------------------------------------------------------------------- supervisor


def _supervise(checker: int, program: int, deadline: float) -> int:
    """Wait for the checker until `deadline`; then SIGKILL both. Exit status, EXIT_TIMEOUT at the deadline."""
    code = EXIT_TIMEOUT
    while time.monotonic() < deadline:
        pid, status = os.waitpid(-1, os.WNOHANG)  # also reaps the program (and, as PID 1, orphans)
        if pid == checker:
            code = os.waitstatus_to_exitcode(status)
            code = code if code >= 0 else 128 - code
            break
        if pid == 0:
            time.sleep(0.002)
    # the checker first: killed after the program, a checker still running would see the program end and
    # could report "program ended" for what was a timeout
    for pid in (checker, program):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return code


def _start(req: dict, result_fd: int) -> None:
    """S: build the filesystem, start C and P, supervise. Never returns."""
    mode = req["mode"]
    info = {"isolation": "namespaces" if mode else "guard", "mode": mode}
    if not mode:
        info["landlock"] = landlock_abi()
        info["seccomp"] = os.uname().machine in SECCOMP_ARCH
        if req["uid"] is not None:  # the working directory is the program's, as `nobody`
            os.chown(".", req["uid"], req["gid"])
    if mode:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            # Opened in the new mount namespace, before taking the user namespace's root (which is
            # `nobody` outside and may not reach e.g. /root/.pyenv).
            req["binds"] = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for path in req["binds"]}
            if mode == "userns":
                os.setresgid(0, 0, 0)
                os.setresuid(0, 0, 0)
            _build_root(req["new_root"], req["binds"], req["masks"], req["tmpfs_mb"])
        except OSError as e:  # never run the program with the host's filesystem visible
            info["isolation"] = "unavailable"
            info["error"] = str(e)
            os.write(result_fd, (repr(info) + "\n").encode())
            os._exit(3)
        info["root"] = "private"
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # the program may not ptrace S or read its memory
    os.write(result_fd, (repr(info) + "\n").encode())
    deadline = time.monotonic() + req["timeout"]
    calls_r, calls_w = os.pipe()
    replies_r, replies_w = os.pipe()
    checker = os.fork()
    if checker == 0:
        os.close(calls_r)
        os.close(replies_w)
        verdict = "failed: sandbox error"
        try:
            trusted = _read_part(0)
            if not mode and req["uid"] is not None:
                _keep_stdlib_reachable()
            _drop_identity(mode, req["uid"], req["gid"])
            _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # after the identity change, which resets it
            _set_limits(req)
            verdict = _run_checker(trusted, calls_w, replies_r, req["call_timeout"], deadline)
        finally:
            os.write(result_fd, (verdict + "\n").encode())
            os._exit(0)
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)  # the trusted part still waiting on stdin is the checker's alone
    for fd in (null, result_fd, calls_w, replies_r):
        os.close(fd)
    if mode:
        _check(_libc.unshare(CLONE_NEWPID), "unshare(PID) for the program")
    program = os.fork()
    if program == 0:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            if not mode and req["uid"] is not None:
                _keep_stdlib_reachable()
            if not mode and info["landlock"]:  # before the identity change: `nobody` may not open the paths
                _landlock(req["binds"], os.getcwd())
            if not mode and info["seccomp"]:
                _no_sockets()
            _drop_identity(mode, req["uid"], req["gid"])
            if mode:  # alone in its PID namespace: dumpable, so the tests can read its memory and find no
                _libc.prctl(
                    PR_SET_DUMPABLE, 1, 0, 0, 0
                )  # checker code in it (guard mode: other sandboxes see it)
            _set_limits(req)
        except BaseException:  # noqa: BLE001 - never run the program half-isolated
            os._exit(3)
        _serve_program(req, calls_r, replies_w)
    os.close(calls_r)
    os.close(replies_w)
    os._exit(_supervise(checker, program, deadline))


def main() -> None:
    req = _read_part(0)
    result_fd, isolation, root = req["result_fd"], req["isolation"], os.geteuid() == 0
    if not root:
        req["uid"] = req["gid"] = None
    mode = None
    if isolation in ("auto", "userns"):
        if root:
            os.setgroups([])  # no supplementary groups (root's included) survive into the namespace
        outside = (req["uid"], req["gid"]) if root and req["uid"] is not None else (os.getuid(), os.getgid())
        mode = "userns" if _unshare_userns(*outside) else None
    if mode is None and isolation in ("auto", "rootns") and root:
        mode = "rootns" if _unshare_root() else None
    if mode is None and not (isolation in ("auto", "guard") and req["allow_guard"]):
        os.write(result_fd, (repr({"isolation": "unavailable", "mode": isolation}) + "\n").encode())
        os._exit(3)
    req["mode"] = mode
    if mode == "userns":  # inside, the program and the checker are the namespace's root without capabilities
        req["uid"] = req["gid"] = None
    if not mode:
        _start(req, result_fd)
    s = os.fork()  # S is PID 1 of the new PID namespace
    if s == 0:
        _start(req, result_fd)
    os.close(result_fd)
    # Outside: pass S's exit status on (the caller kills our process group if even this hangs).
    _, status = os.waitpid(s, 0)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


if __name__ == "__main__":
    main()
