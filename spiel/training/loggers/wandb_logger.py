"""Weights & Biases for ``logger=wandb``: one wandb run per training run (and per sweep job), started on
rank 0 before the Trainer (whose WandbCallback then logs into it), given the run's best validation loss
and its step in its summary (as ``summary.json`` has them), finished at the end of the job."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def resolve_mode(mode: str) -> str | None:
    """None: leave it to WANDB_MODE. auto: online with an API key, else offline."""
    if os.environ.get("WANDB_MODE"):
        return None
    if mode == "auto":
        return "online" if has_api_key() else "offline"
    return mode


def start(logger_cfg, run_dir: Path, run_name: str, config: dict) -> None:
    import wandb

    mode = resolve_mode(logger_cfg.mode)
    if mode == "offline" and logger_cfg.mode == "auto":
        log.info(
            "wandb: no API key found, logging offline to %s/wandb (upload later with `wandb sync`)", run_dir
        )
    wandb.init(
        project=logger_cfg.project,
        entity=logger_cfg.entity,
        group=logger_cfg.group,
        tags=list(logger_cfg.tags) or None,
        name=run_name,
        dir=str(run_dir),
        config=config,
        mode=mode,
    )


SUMMARY_KEYS = ("best_eval_loss", "best_eval_step")  # what a sweep compares runs by, beside the history


def record_summary(summary: dict) -> None:
    """Put ``summary.json``'s ``SUMMARY_KEYS`` into the open wandb run's summary (where the runs table and
    sweeps read them); nothing without a wandb run or a validation set."""
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None)
    if run is None:
        return
    for key in SUMMARY_KEYS:
        if summary.get(key) is not None:
            run.summary[key] = summary[key]


def finish() -> None:
    """Close the wandb run of this job, if wandb was used at all (safe to call always)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
