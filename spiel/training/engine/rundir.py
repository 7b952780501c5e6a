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

from spiel.training.engine import atomic_checkpoints as checkpoints
from spiel.training.loggers.metrics import METRICS_FILE

FINAL_DIR = "final"
OUTPUTS = (FINAL_DIR, METRICS_FILE, "summary.json", "param_ages.json", "param_ages.png", "FAILED", "wandb",
           "runs", "loss.png")  # runs/: logger=tensorboard's event files


class RunDirError(RuntimeError):
    """The run dir holds an earlier run and the config does not say what to do with it."""


def earlier_outputs(run_dir: Path) -> list[str]:
    run_dir = Path(run_dir)
    found = [name for name in OUTPUTS if (run_dir / name).exists()]
    found += [p.name for p in run_dir.glob("checkpoint-*") if p.is_dir()]
    return sorted(found)


def prepare_run_dir(run_dir: Path, resume: str, overwrite: bool) -> Path | None:
    """Decide (on rank 0) where training starts; returns the checkpoint to resume from, if any (its files
    checked against its manifest)."""
    start = _choose_start(run_dir, resume, overwrite)
    damage = start is not None and checkpoints.damaged_file(start)
    if damage:
        older = [p.name for p in checkpoints.complete_checkpoints(start.parent) if p != start]
        raise RunDirError(f"resume: {damage}. Nothing was deleted. Resume from an older checkpoint "
                          f"(resume=<path>; complete ones: {older}), or start over with overwrite=true")
    return start


def _choose_start(run_dir: Path, resume: str, overwrite: bool) -> Path | None:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoints.clean_staging(run_dir)  # an interrupted save: never a checkpoint
    earlier = earlier_outputs(run_dir)
    if resume == "auto":
        latest = checkpoints.latest_checkpoint(run_dir)
        if latest is not None:
            return latest
        if (run_dir / FINAL_DIR).exists() and not overwrite:
            raise RunDirError(f"{run_dir} holds a finished run (final/) and no checkpoint to resume from; "
                              "pass overwrite=true to train again from scratch")
        _clear(run_dir)
        return None
    if resume != "never":
        path = Path(resume)
        if not checkpoints.is_complete(path):
            raise RunDirError(f"resume={resume} is not a complete checkpoint (no valid "
                              f"{checkpoints.MARKER}); complete ones in its run dir: "
                              f"{[p.name for p in checkpoints.complete_checkpoints(path.parent)]}")
        return path
    if earlier and not overwrite:
        raise RunDirError(
            f"{run_dir} already holds a run ({', '.join(earlier)}). Pass resume=auto to continue it from its "
            "newest checkpoint, overwrite=true to start over, or run_name=<name> for a new run dir.")
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
