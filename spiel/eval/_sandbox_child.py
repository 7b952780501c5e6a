"""Bootstrap that runs ONE untrusted Python program; started by `spiel.eval.sandbox` as
`python -I -S -B _sandbox_child.py` with a JSON request on stdin. Standard library only (it must not
import spiel or anything from site-packages).

Layers, strongest first; each is used where the OS allows it and the result records which were active:

1. Namespaces (Linux `unshare`): a new user namespace together with new network (no interfaces but a
   downed loopback: no network at all), mount, PID, IPC and UTS namespaces. Inside, uid/gid 0 map to
   `nobody` outside when the caller is root, else to the caller's own ids. Where user namespaces are
   disabled and the caller is root, the same namespaces without a user namespace ("rootns").
2. Filesystem: every mount is made read-only (recursive `mount_setattr`), a fresh size-limited tmpfs is
   the working directory (and TMPDIR/HOME), a fresh /proc shows only the sandbox's processes.
3. Identity: the program runs with no capabilities at all, as `nobody` outside when the caller is root
   (so RLIMIT_NPROC applies, counted per user namespace, and nothing of anyone else's can be modified
   even through a writable mount); the supervisor keeps its identity.
4. Resource limits: RLIMIT_AS (memory), RLIMIT_NPROC (processes), RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_NOFILE,
   no core dumps.
5. Supervision: PID 1 of the new PID namespace is a trusted supervisor that runs the program in its
   child and SIGKILLs it at the wall-clock deadline; when PID 1 exits the kernel kills every process left
   in the namespace (daemonized forks included).
6. Fallback when no namespace can be created: a Python-level guard that disables the os/shutil/
   subprocess/socket functions that delete files, spawn processes or open connections. That guard is
   NOT a security boundary; the result says `isolation: "guard"`.

The program counts as passed only if it runs to the end and the supervisor then writes the request's
random token to the result pipe (fd given in the request): exit(0), os._exit(0) or a killed process
never pass.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
import time

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MS_BIND, MS_REC, MS_PRIVATE, MS_REMOUNT, MS_RDONLY = 4096, 16384, 1 << 18, 32, 1
AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = -100, 0x8000, 1
SYS_MOUNT_SETATTR = 442  # the same number on every architecture (syscalls added after 5.x are unified)
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38
SYS_CAPSET = {"x86_64": 126, "aarch64": 91}

EXIT_TIMEOUT = 124

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


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _unshare_userns(outside_uid: int, outside_gid: int) -> bool:
    """New user namespace (+ the others) in which uid/gid 0 map to the given outside ids.

    A process may map only its own ids from inside; mapping root to another uid needs CAP_SETUID in the
    parent namespace, so then a helper forked beforehand (still outside) writes the maps.
    """
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    own = outside_uid == os.geteuid() and outside_gid == os.getegid()
    if own:
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


def _setup_filesystem(workdir: str, tmpfs_mb: int, python_fd: int | None) -> list[str]:
    """Read-only view of every mount, a private tmpfs at `workdir`, a fresh /proc; returns new sys.path.

    `python_fd` (an O_PATH descriptor of the interpreter's prefix, opened while that was still
    reachable) is bind-mounted read-only under the working directory and sys.path moved there: the
    interpreter may live where the program's uid cannot go (e.g. /root/.pyenv).
    """
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    attr = _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    ret = _libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr))
    _check(ret, "mount_setattr(/, RDONLY, recursive)")
    _mount("tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmpfs_mb}m,mode=0777")
    try:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:
        pass  # the read-only host /proc stays; the PID namespace still hides other processes' pids
    path = list(sys.path)
    if python_fd is not None:
        prefix = os.path.realpath(sys.base_prefix)
        target = os.path.join(workdir, ".python")
        os.mkdir(target)
        _mount(f"/proc/self/fd/{python_fd}", target, None, MS_BIND | MS_REC)
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        os.close(python_fd)

        def moved(p: str) -> str:
            real = os.path.realpath(p)
            return os.path.join(target, os.path.relpath(real, prefix)) if real.startswith(prefix + os.sep) else p

        path = [moved(p) for p in path]
        for mod in list(sys.modules.values()):  # packages already imported look up submodules here
            search = getattr(mod, "__path__", None)
            if isinstance(search, list):
                search[:] = [moved(p) for p in search]
        sys.path_importer_cache.clear()
    return path


def _become_ns_root() -> None:
    """In the user namespace: take its uid/gid 0 (which are mapped, so files can be created); the
    capabilities within the namespace stay until `_drop_identity`."""
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def _drop_identity(mode: str, uid: int | None, gid: int | None) -> None:
    """Called in the program's process only."""
    if mode == "rootns":
        if uid is not None:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)  # also clears every capability
    elif mode == "userns":
        # Drop every capability so the program cannot undo the read-only mounts: capset(v3 header,
        # zeroed data) clears the effective, permitted and inheritable sets.
        _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)
        data = (ctypes.c_uint32 * 6)()
        nr = SYS_CAPSET.get(os.uname().machine)
        if nr is None:
            raise OSError(f"capset: unknown syscall number on {os.uname().machine}")
        _check(_libc.syscall(nr, ctypes.byref(header), ctypes.byref(data)), "capset")


def _set_limits(req: dict) -> None:
    def lim(which, value):
        if value is not None:
            value = int(value)
            resource.setrlimit(which, (value, value))

    lim(resource.RLIMIT_CORE, 0)
    lim(resource.RLIMIT_AS, req["memory_bytes"])
    lim(resource.RLIMIT_DATA, req["memory_bytes"])
    lim(resource.RLIMIT_CPU, req["cpu_seconds"])
    lim(resource.RLIMIT_FSIZE, req["fsize_bytes"])
    lim(resource.RLIMIT_NOFILE, req["nofile"])
    lim(resource.RLIMIT_NPROC, req["nproc"])


def _guard() -> None:
    """Fallback when no OS isolation exists: disable the obvious ways to delete, spawn and connect."""
    import builtins
    import shutil
    import subprocess

    for name in ("kill", "killpg", "system", "putenv", "remove", "removedirs", "rmdir", "unlink", "rename",
                 "renames", "replace", "truncate", "ftruncate", "fork", "forkpty", "setuid", "chmod", "chown",
                 "lchown", "link", "symlink", "execv", "execve", "execvp", "execvpe", "spawnv", "spawnve",
                 "posix_spawn", "posix_spawnp", "chdir", "fchdir", "chroot"):
        if hasattr(os, name):
            setattr(os, name, None)
    for mod in ("posix",):
        m = sys.modules.get(mod)
        for name in ("fork", "remove", "unlink", "rmdir", "rename", "replace", "system", "kill"):
            if m is not None and hasattr(m, name):
                setattr(m, name, None)
    shutil.rmtree = shutil.move = shutil.chown = None
    subprocess.Popen = None
    builtins.exit = builtins.quit = None
    try:
        import socket

        socket.socket = socket.create_connection = socket.socketpair = None
    except ImportError:
        pass
    for name in ("ctypes", "_ctypes", "multiprocessing", "resource", "psutil"):
        sys.modules[name] = None  # type: ignore[assignment]

    import io

    real_open, real_os_open, cwd = builtins.open, os.open, os.getcwd()

    def inside(path) -> bool:
        if isinstance(path, int):
            return True
        return os.path.realpath(os.fspath(path)).startswith(cwd + os.sep)

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and not inside(file):
            raise PermissionError(f"sandbox guard: writing outside the working directory: {file!r}")
        return real_open(file, mode, *args, **kwargs)

    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & write_flags and not inside(path):
            raise PermissionError(f"sandbox guard: writing outside the working directory: {path!r}")
        return real_os_open(path, flags, *args, **kwargs)

    builtins.open = io.open = guarded_open
    os.open = guarded_os_open


def _run_program(req: dict, isolated: bool) -> None:
    """Executes the program in this process; on normal completion writes the token to the result fd."""
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "HOME": req["workdir"], "TMPDIR": req["workdir"],
                       "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"})
    result_fd, token = req["result_fd"], req["token"]
    program, req["program"], req["token"] = req["program"], None, None
    code = compile(program, "<program>", "exec")
    if not isolated:
        _guard()
    sys.stdout.flush()
    exec(code, {})  # noqa: S102 - running untrusted code is this module's purpose
    os.write(result_fd, f"passed {token}\n".encode())
    os._exit(0)


def _supervise(child: int, deadline: float) -> int:
    """Wait for `child` until `deadline`; SIGKILL it after. Returns the exit status or EXIT_TIMEOUT."""
    while True:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            return code if code >= 0 else 128 - code  # killed by a signal: 128 + signal number
        if time.monotonic() >= deadline:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            return EXIT_TIMEOUT
        time.sleep(0.005)


def main() -> None:
    req = json.loads(sys.stdin.read())
    workdir, isolation = req["workdir"], req["isolation"]
    root = os.geteuid() == 0
    uid, gid = req.get("uid"), req.get("gid")
    mode = None
    if isolation in ("auto", "userns"):
        if root:
            os.setgroups([])  # no supplementary groups (root's included) survive into the namespace
        outside = (uid, gid) if root and uid is not None else (os.getuid(), os.getgid())
        mode = "userns" if _unshare_userns(*outside) else None
    if mode is None and isolation in ("auto", "rootns") and root:
        mode = "rootns" if _unshare_root() else None
    if mode is None and isolation not in ("auto", "guard"):
        os.write(req["result_fd"], (json.dumps({"isolation": "unavailable", "mode": isolation}) + "\n").encode())
        os._exit(3)
    info = {"isolation": "namespaces" if mode else "guard", "mode": mode}
    if mode:
        pid1 = os.fork()  # the first child is PID 1 of the new PID namespace
        if pid1:
            # Outside the namespace: wait and pass the exit code on (the caller kills our process group
            # if even this hangs). When PID 1 exits, the kernel kills whatever is left inside.
            _, status = os.waitpid(pid1, 0)
            os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # the program may not ptrace or read the supervisor
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            # Open the interpreter's prefix now: the program's uid may not reach it (bound in below).
            python_fd = None
            if root and uid is not None:
                python_fd = os.open(os.path.realpath(sys.base_prefix), os.O_PATH | os.O_DIRECTORY)
            if mode == "userns":
                _become_ns_root()
            sys.path[:] = _setup_filesystem(workdir, req["tmpfs_mb"], python_fd)
            info["readonly_fs"] = True
        except OSError as e:  # e.g. a kernel without mount_setattr: keep the namespaces, add the guard
            info["readonly_fs"] = False
            info["fs_error"] = str(e)
        if root and uid is not None:
            info["uid"] = uid
    os.chdir(workdir)
    os.write(req["result_fd"], (json.dumps(info) + "\n").encode())
    # The supervisor (PID 1 of the namespace, or the session leader without one) keeps its identity and
    # runs the program in a child, which it SIGKILLs at the deadline.
    deadline = time.monotonic() + req["timeout"]
    child = os.fork()
    if child == 0:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            if mode:
                _drop_identity(mode, uid, gid)
            _set_limits(req)
        except BaseException as e:  # never run the program half-isolated
            sys.stderr.write(f"sandbox setup failed: {e}\n")
            os._exit(3)
        _run_program(req, isolated=mode is not None and info.get("readonly_fs", False))
    os._exit(_supervise(child, deadline))


if __name__ == "__main__":
    main()
