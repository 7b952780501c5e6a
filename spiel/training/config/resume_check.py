"""Resume continues the same run: the config a checkpoint was trained with (its run dir's config.yaml,
resolved) is compared with the current one on every key that changes what is trained.

    check_resume_config(checkpoint, cfg, allow_changes=False)   # RunDirError naming what differs
    record_training_data(run_dir, stats, checkpoint, allow_changes)  # ... and the training data's content

The data is compared by content (each source's SHA-256, or a hub dataset's fingerprint), recorded in
``<run>/data_fingerprint.json`` when the run starts: a file edited in place keeps its path, and so its
config, but trains another run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from spiel.json_text import parse_json
from spiel.training.config.hydra_config import flatten_keys, with_moved_keys
from spiel.training.engine import atomic_checkpoints as checkpoints
from spiel.training.engine.rundir import RunDirError

log = logging.getLogger("spiel.cli.train")
SAVED_CONFIG = "config.yaml"
DATA_FINGERPRINT = "data_fingerprint.json"
# Keys that say where and how a run is written or shown, not what is trained; the same list keeps them out
# of run dir names (hydra.job.config.override_dirname.exclude_keys in configs/train.yaml).
NEUTRAL_KEYS = (
    "resume",
    "resume_allow_config_changes",
    "overwrite",
    "output_root",
    "run_name",
    "progress_bar",
    "logging_steps",
    "save_steps",
    "save_total_limit",
    "num_workers",
    "data_cache_dir",
    "data_num_proc",
    "plot_ages",
    "device",
    "logger",
)
ALLOW = "resume_allow_config_changes=true"


def resume_target(run_dir: Path, resume: str) -> Path | None:
    """The checkpoint a run would resume from (read-only: nothing is cleaned or created)."""
    if resume == "auto":
        return checkpoints.latest_checkpoint(run_dir)
    if resume not in ("never", "", None):
        return Path(resume)
    return None


def _neutral(key: str) -> bool:
    return any(key == n or key.startswith(n + ".") for n in NEUTRAL_KEYS)


def config_differences(saved: dict, current: dict) -> list[tuple[str, object, object]]:
    """(key, saved value, current value) for every training key whose value differs. A config saved
    before the rates moved under ``method`` is read in today's keys."""
    missing = object()
    a, b = flatten_keys(with_moved_keys(saved)), flatten_keys(with_moved_keys(current))
    diffs = []
    for key in sorted(set(a) | set(b)):
        old, new = a.get(key, missing), b.get(key, missing)
        if _neutral(key) or old == new:
            continue
        diffs.append((key, "(absent)" if old is missing else old, "(absent)" if new is missing else new))
    return diffs


def check_resume_config(checkpoint: Path, cfg: DictConfig, allow_changes: bool = False) -> None:
    """Refuse (RunDirError) to resume ``checkpoint`` with a config that trains differently."""
    checkpoint = Path(checkpoint)
    saved_path = checkpoint.parent / SAVED_CONFIG
    current = OmegaConf.to_container(cfg, resolve=True)
    current.pop("hydra", None)
    try:
        saved = yaml.safe_load(saved_path.read_text())
    except (OSError, yaml.YAMLError) as e:
        if allow_changes:
            log.warning(
                "resuming %s without checking its config (%s unreadable: %s)", checkpoint, saved_path, e
            )
            return
        raise RunDirError(
            f"resume: cannot check that {checkpoint} was trained with this config: {saved_path} "
            f"is missing or unreadable ({type(e).__name__}); pass {ALLOW} to resume anyway"
        ) from None
    if not isinstance(saved, dict):
        saved = {}
    diffs = config_differences(saved, current)
    if not diffs:
        return
    listed = ", ".join(f"{key} {old!r} -> {new!r}" for key, old, new in diffs)
    if allow_changes:
        log.warning("resuming %s with a changed config (%s): %s", checkpoint, ALLOW, listed)
        return
    raise RunDirError(
        f"resume: {checkpoint} was trained with a different config ({saved_path}): {listed}. Resuming would "
        f"continue one run with another run's settings. Rerun with the saved values, start a new run "
        f"(run_name=<name> or overwrite=true), or pass {ALLOW} to continue with the new values."
    )


def record_training_data(
    run_dir: Path, stats: dict, checkpoint: Path | None, allow_changes: bool = False
) -> None:
    """Write the training data's content fingerprint (``stats`` of ``build_train_dataset``) into the run dir;
    when resuming ``checkpoint``, first refuse (RunDirError) data that differs from the one its run recorded."""
    current = {name: source["content"] for name, source in stats["sources"].items()}
    path = Path(checkpoint).parent / DATA_FINGERPRINT if checkpoint is not None else None
    if checkpoint is not None:
        try:
            saved = parse_json(path.read_text())["sources"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            saved = None
            if not allow_changes:
                raise RunDirError(
                    f"resume: cannot check that the training data is the one this run was trained "
                    f"on: {path} is missing or unreadable ({type(e).__name__}); pass {ALLOW} to "
                    "resume anyway"
                ) from None
        changed = sorted(n for n in set(current) | set(saved or {}) if (saved or {}).get(n) != current.get(n))
        if saved is not None and changed:
            origins = {n: stats["sources"][n]["origin"] for n in changed if n in stats["sources"]}
            listed = ", ".join(f"{n} ({origins.get(n, 'no longer a source')})" for n in changed)
            if not allow_changes:
                raise RunDirError(
                    f"resume: the training data changed since this run started (recorded in {path}): the content "
                    f"of source(s) {listed} differs. Resuming would continue one run on another run's data. "
                    f"Restore the data, start a new run (run_name=<name> or overwrite=true), or pass {ALLOW} to "
                    "continue on the new data."
                )
            log.warning("resuming with changed training data (%s): %s", ALLOW, listed)
    (Path(run_dir) / DATA_FINGERPRINT).write_text(json.dumps({"sources": current}, indent=1) + "\n")
