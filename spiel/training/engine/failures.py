"""Failures spiel-train reports as one message and a non-zero exit (no traceback): bad input the user
can fix, and runs that cannot finish correctly (diverged, disk full). Anything else is a bug and keeps
its traceback."""

from __future__ import annotations

import errno
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

EXIT_CODE = 2


class TrainingDiverged(RuntimeError):
    """The loss, a gradient or a trained value stopped being finite."""


class OutputError(RuntimeError):
    """The run dir cannot be written (no space left, read-only, no permission)."""


def user_errors() -> tuple[type[BaseException], ...]:
    from spiel.data.errors import DataError
    from spiel.training.config.schema import ConfigError
    from spiel.training.engine.rundir import RunDirError

    found = [ConfigError, DataError, RunDirError, TrainingDiverged, OutputError]
    checkpoint = sys.modules.get(
        "spiel.checkpoint.fingerprint"
    )  # not imported: none of its errors can have been raised
    if checkpoint is not None:
        found.append(checkpoint.CheckpointMismatchError)
    return tuple(found)


WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def as_user_error(error: BaseException, run_dir: Path | str) -> BaseException | None:
    """``error`` itself if it is one the user can act on; a failed write anywhere in the run (metrics,
    summary, ...) as an OutputError naming the file; else None (a bug: keep the traceback)."""
    if isinstance(error, user_errors()):
        return error
    if isinstance(error, OSError) and error.errno in WRITE_ERRNOS:
        return OutputError(describe_os_error(error, error.filename or run_dir, "cannot write"))
    return None


def describe_os_error(error: OSError, path: Path | str, doing: str) -> str:
    """``saving checkpoint-4 to /x: no space left on device (...)``: the path and the reason in words."""
    reasons = {
        errno.ENOSPC: "no space left on device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "read-only file system",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
    }
    reason = reasons.get(error.errno, error.strerror or str(error))
    return f"{doing} {path}: {reason} ({error})"


def _os_error_in(error: BaseException) -> OSError | None:
    """The OSError behind ``error``: torch.save reports a failed write as a RuntimeError from C++."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError):
            return error
        error = error.__cause__ or error.__context__
    return None


def _torch_write_failure(error: BaseException) -> bool:
    text = str(error)
    return isinstance(error, RuntimeError) and ("inline_container" in text or "file write failed" in text)


def _nearly_full(path: Path | str, spare: int = 64 * 2**20) -> bool:
    for candidate in (Path(path), *Path(path).parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free < spare
    return False


@contextmanager
def writing(path: Path | str, doing: str):
    """Turn a failed write under ``path`` into an OutputError naming the path and the reason."""
    try:
        yield
    except OutputError:
        raise
    except Exception as e:
        os_error = _os_error_in(e)
        if os_error is None and _torch_write_failure(e):  # torch's C++ writer loses the errno
            os_error = OSError(
                errno.ENOSPC if _nearly_full(path) else errno.EIO, "torch.save could not write"
            )
        if os_error is None:
            raise
        raise OutputError(describe_os_error(os_error, path, doing)) from e
