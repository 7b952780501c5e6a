"""Complete-or-absent checkpoints on disk.

Every checkpoint (``checkpoint-N/`` and ``final/``) is written into ``<run>/.staging/<name>``, its files
are flushed to disk, a marker listing every file and its size is written last, and only then is the
directory renamed into place (``os.rename`` is atomic within a filesystem). A process killed during a
save therefore leaves at most a staging directory, which the next start deletes; a ``checkpoint-N/`` in
the run dir is always complete, and :func:`is_complete` re-checks the marker before resuming from one.
The marker is also the checkpoint's manifest: the SHA-256 of every file, which a resume compares
(``rundir.checkpoint_damage``: a flipped bit in ``optimizer.pt`` would otherwise resume into another result).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from spiel.data.reader import file_sha256
from spiel.json_text import parse_json

MARKER = "checkpoint_complete.json"
STAGING = ".staging"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def staging_dir(run_dir: Path) -> Path:
    return Path(run_dir) / STAGING


def clean_staging(run_dir: Path) -> None:
    shutil.rmtree(staging_dir(run_dir), ignore_errors=True)


def _fsync_path(path: Path) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _files(directory: Path) -> dict[str, int]:
    return {
        str(p.relative_to(directory)): p.stat().st_size
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MARKER
    }


def seal(directory: Path, **info) -> None:
    """Flush every file of ``directory`` and write the completion marker (last, atomically)."""
    directory = Path(directory)
    files = _files(directory)
    for name in files:
        _fsync_path(directory / name)
    for sub in [p for p in directory.rglob("*") if p.is_dir()] + [directory]:
        _fsync_path(sub)
    digests = {name: file_sha256(directory / name) for name in files}
    tmp = directory / (MARKER + ".tmp")
    tmp.write_text(json.dumps({"files": files, "sha256": digests, **info}, indent=1))
    _fsync_path(tmp)
    os.replace(tmp, directory / MARKER)
    _fsync_path(directory)


def publish(staged: Path, target: Path) -> Path:
    """Move a sealed staging directory to ``target`` (replacing an older one of the same name)."""
    staged, target = Path(staged), Path(target)
    if not is_complete(staged):
        raise RuntimeError(f"refusing to publish {staged}: it is not sealed")
    old = None
    if target.exists():
        old = target.with_name(f"{target.name}.old-{os.getpid()}")
        os.rename(target, old)
    os.rename(staged, target)
    _fsync_path(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def is_complete(directory: Path) -> bool:
    """Sealed, and every listed file is present with its recorded size."""
    marker = Path(directory) / MARKER
    try:
        files = parse_json(marker.read_text())["files"]
    except (OSError, ValueError, KeyError):
        return False
    return all(
        (Path(directory) / name).is_file() and (Path(directory) / name).stat().st_size == size
        for name, size in files.items()
    )


def checkpoint_step(directory: Path) -> int | None:
    m = CHECKPOINT_RE.match(Path(directory).name)
    return int(m.group(1)) if m else None


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """The run's complete ``checkpoint-N`` directories, oldest (smallest N) first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None and is_complete(p)]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def rotate(run_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints; returns the deleted ones."""
    found = complete_checkpoints(run_dir)
    doomed = found[: max(0, len(found) - keep)]
    for path in doomed:
        (path / MARKER).unlink(missing_ok=True)  # incomplete first, so a kill mid-delete is harmless
        shutil.rmtree(path, ignore_errors=True)
    return doomed
