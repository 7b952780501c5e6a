"""One writer per run dir: an exclusive lock held by the process that trains into it (rank 0).

    acquire(run_dir)   # RunLockedError naming the holder (pid, host, start, command) when another has it
    release(run_dir)

The lock is ``fcntl.flock`` on ``<run>/.spiel-train.lock``, so the kernel drops it when the holder exits,
however it exits (a SIGKILL included): a lock file left behind is stale by construction. The file records
the holder for the message. On a filesystem without flock (some network mounts) the recorded pid decides:
a holder on this host whose process is gone is stale and replaced; a live one is refused.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from spiel.training.engine.rundir import RunDirError

LOCK_NAME = ".spiel-train.lock"
_HELD: dict[str, int] = {}  # resolved run dir -> the descriptor holding its lock


class RunLockedError(RunDirError):
    """Another process is training into this run dir."""


def _holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        found = json.loads(os.read(fd, 1 << 16) or b"{}")
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _alive(holder: dict) -> bool:
    """The recorded holder still runs (a holder on another host is assumed to)."""
    if holder.get("host") != socket.gethostname():
        return bool(holder)
    try:
        os.kill(int(holder.get("pid", 0)), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:  # it exists, as another user
        return True
    return int(holder.get("pid", 0)) > 0


def _refuse(run_dir: Path, holder: dict) -> RunLockedError:
    who = (
        (
            f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('started', '?')}: "
            f"{holder.get('command', '?')}"
        )
        if holder
        else "a process that has not recorded itself yet"
    )
    return RunLockedError(
        f"{run_dir} is in use by another spiel-train ({who}); two writers in one run dir would log every step "
        "twice and overwrite each other's checkpoints. Wait for it to end or stop it, or choose run_name=<other>."
    )


def acquire(run_dir: Path) -> None:
    """Take the run dir's lock for this process (a no-op when it already holds it)."""
    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if key in _HELD:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _refuse(run_dir, _holder(fd)) from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            holder = _holder(fd)  # no flock here: the recorded pid decides
            if holder.get("pid") != os.getpid() and _alive(holder):
                raise _refuse(run_dir, holder) from None
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(record).encode())
    except BaseException:
        os.close(fd)
        raise
    _HELD[key] = fd


def release(run_dir: Path) -> None:
    """Give the lock up (the file stays: removing it could split the next two takers onto two files)."""
    fd = _HELD.pop(str(Path(run_dir).resolve()), None)
    if fd is not None:
        os.close(fd)  # closing drops the flock
