"""The run directory: what a fresh run, a resumed run and an overwrite do with what is already there.

<run>/.hydra/            resolved config (Hydra), <run>/train.log
<run>/config.yaml        the resolved training config (also what the summary refers to)
<run>/data_fingerprint.json  the training data's content, compared on resume
<run>/metrics.jsonl      every log event
<run>/checkpoint-N/      intermediate checkpoints (complete or absent)
<run>/final/             the final checkpoint (SpIEL delta | peft adapter | transformers model)
<run>/param_ages.{json,png}, <run>/summary.json
"""

from __future__ import annotations

import shutil
from pathlib import Path

from spiel.data.reader import file_sha256
from spiel.json_text import parse_json
from spiel.training.engine import atomic_checkpoints as checkpoints
from spiel.training.loggers.metrics import METRICS_FILE

FINAL_DIR = "final"
OUTPUTS = (
    FINAL_DIR,
    METRICS_FILE,
    "summary.json",
    "param_ages.json",
    "param_ages.png",
    "FAILED",
    "wandb",
    "runs",
    "loss.png",
)  # runs/: logger=tensorboard's event files


class RunDirError(RuntimeError):
    """The run dir holds an earlier run and the config does not say what to do with it."""


def earlier_outputs(run_dir: Path) -> list[str]:
    run_dir = Path(run_dir)
    found = [name for name in OUTPUTS if (run_dir / name).exists()]
    found += [p.name for p in run_dir.glob("checkpoint-*") if p.is_dir()]
    return sorted(found)


# the files a resume unpickles (optimizer, scheduler, selector, scaler, RNG states); training_args.bin is never read
PICKLED = ("*.pt", "rng_state*.pth")


def _unpickle_damage(path: Path) -> str | None:
    """Why torch cannot load ``path`` the safe way (``weights_only=True``, as a resume does), or None."""
    import pickle

    import torch
    from transformers.trainer_pt_utils import safe_globals

    try:
        with safe_globals():  # the numpy types transformers' RNG state holds
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # mmap: tensors stay on disk
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            return (
                "it holds Python objects other than tensors and plain data, which a checkpoint never does "
                "(altered or planted); it is never loaded with weights_only=False"
            )
        return f"damaged ({str(e).splitlines()[0]})"
    except Exception as e:  # a truncated or overwritten zip/pickle: torch's errors have no common type
        return f"damaged ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'})"
    return None


def checkpoint_damage(directory: Path) -> tuple[str, str] | None:
    """(file, what is wrong) for a checkpoint a resume could not read as it was saved, else None."""
    directory = Path(directory)
    marker = directory / checkpoints.MARKER
    if not marker.exists():
        return checkpoints.MARKER, "missing (a save or a rotation that was interrupted)"
    try:
        manifest = parse_json(marker.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return checkpoints.MARKER, f"unreadable ({e})"
    for name, size in files.items():
        path = directory / name
        if not path.is_file():
            return name, "missing"
        if path.stat().st_size != size:
            return name, f"{path.stat().st_size:,} bytes, the marker records {size:,} (truncated or altered)"
    digests = manifest.get("sha256")  # absent in checkpoints sealed before the manifest carried hashes
    for name, digest in digests.items() if isinstance(digests, dict) else ():
        if file_sha256(directory / name) != digest:
            return name, (
                f"damaged: its SHA-256 differs from the one {checkpoints.MARKER} recorded when it was "
                "saved (same size, other bytes)"
            )
    for pattern in PICKLED:
        for path in sorted(directory.glob(pattern)):
            why = _unpickle_damage(path)
            if why:
                return path.name, why
    return None


def _refuse_damaged(found: dict[Path, tuple[str, str]], run_dir: Path) -> None:
    path, (file, why) = max(found.items(), key=lambda item: checkpoints.checkpoint_step(item[0]) or 0)
    intact = [p.name for p in checkpoints.complete_checkpoints(run_dir) if p not in found]
    delta = (
        f" Its delta is untouched: spiel-eval ckpt={path} and spiel-export ckpt={path} use it as it is."
        if file != "spiel_delta.safetensors" and (path / "spiel_delta.safetensors").is_file()
        else ""
    )
    more = f" ({len(found) - 1} other checkpoint(s) are damaged too)" if len(found) > 1 else ""
    raise RunDirError(
        f"cannot resume: {path / file} is {why}{more}. Nothing was deleted.{delta} To train on, resume from an "
        f"intact checkpoint (resume=<its path>; intact here: {intact or 'none'}), or start over with "
        "overwrite=true (deletes this run) or run_name=<new name>."
    )


def check_resumable(run_dir: Path, resume: str) -> None:
    """RunDirError unless every checkpoint a resume would read or could delete reads as it was saved:
    ``resume=auto`` never deletes, and never resumes past, a checkpoint it cannot read."""
    run_dir = Path(run_dir)
    if resume == "auto":
        candidates = [
            p
            for p in run_dir.glob("checkpoint-*")
            if p.is_dir() and checkpoints.checkpoint_step(p) is not None
        ]
        latest = checkpoints.latest_checkpoint(run_dir)
        # a checkpoint older than an intact one without its marker is what an interrupted rotation leaves
        candidates = [
            p
            for p in candidates
            if (p / checkpoints.MARKER).exists()
            or latest is None
            or checkpoints.checkpoint_step(p) > checkpoints.checkpoint_step(latest)
        ]
    elif resume not in ("never", "", None) and Path(resume).is_dir():
        candidates = [Path(resume)]
    else:
        return
    found = {p: why for p in candidates if (why := checkpoint_damage(p)) is not None}
    if found:
        _refuse_damaged(found, run_dir if resume == "auto" else Path(resume).parent)


def prepare_run_dir(run_dir: Path, resume: str, overwrite: bool) -> Path | None:
    """Decide (on rank 0) where training starts; returns the checkpoint to resume from, if any."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoints.clean_staging(run_dir)  # an interrupted save: never a checkpoint
    earlier = earlier_outputs(run_dir)
    check_resumable(run_dir, resume)
    if resume == "auto":
        latest = checkpoints.latest_checkpoint(run_dir)
        if latest is not None:
            return latest
        if (run_dir / FINAL_DIR).exists() and not overwrite:
            raise RunDirError(
                f"{run_dir} holds a finished run (final/) and no checkpoint to resume from; "
                "pass overwrite=true to train again from scratch"
            )
        _clear(run_dir)
        return None
    if resume != "never":
        path = Path(resume)
        if not checkpoints.is_complete(path):
            raise RunDirError(
                f"resume={resume} is not a complete checkpoint (no valid "
                f"{checkpoints.MARKER}); complete ones in its run dir: "
                f"{[p.name for p in checkpoints.complete_checkpoints(path.parent)]}"
            )
        return path
    if earlier and not overwrite:
        raise RunDirError(
            f"{run_dir} already holds a run ({', '.join(earlier)}). Pass resume=auto to continue it from its "
            "newest checkpoint, overwrite=true to start over, or run_name=<name> for a new run dir."
        )
    _clear(run_dir)
    return None


def _clear(run_dir: Path) -> None:
    for name in earlier_outputs(run_dir):
        path = run_dir / name
        if path.is_dir():
            (path / checkpoints.MARKER).unlink(missing_ok=True)
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
