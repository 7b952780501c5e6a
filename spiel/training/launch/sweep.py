"""Sweeps (``spiel-train -m``): each job runs inside a guard that records a failure in its job dir and
lets the other jobs run; a Hydra callback reports failed jobs at the end and makes the sweep exit non-zero.

With the default launcher all jobs share one process, so the guard also releases what a job held
(wandb run, model, CUDA cache) before the next one starts."""

from __future__ import annotations

import gc
import logging
import sys
import traceback
from pathlib import Path

from hydra.experimental.callback import Callback

log = logging.getLogger("spiel.cli.train")
FAILED = "FAILED"


def record_failure(job_dir: Path, error: BaseException) -> None:
    Path(job_dir).mkdir(parents=True, exist_ok=True)
    (Path(job_dir) / FAILED).write_text("".join(traceback.format_exception(error)))


def free_memory() -> None:
    """Drop what the last job left: unreachable objects, and the CUDA cache's unused blocks (a sweep's next job,
    or spiel-eval's next model, would otherwise start beside them)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def release_job_resources() -> None:
    from spiel.training.loggers import wandb_logger

    wandb_logger.finish()
    free_memory()


class SweepReport(Callback):
    """Registered in configs/train.yaml and configs/eval.yaml (hydra.callbacks); fails the sweep if any job
    failed, listing the failed jobs. ``marker``: the file a failed job leaves in its job dir."""

    def __init__(self, marker: str = FAILED):
        self.marker = marker

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failed = sorted(p.parent.name for p in sweep_dir.glob(f"*/{self.marker}"))
        if failed:
            message = (
                f"{len(failed)} sweep job(s) failed: {', '.join(failed)} (the reason in <job dir>/"
                f"{self.marker}, under {sweep_dir})"
            )
            log.error("%s", message)
            print(f"{config.hydra.job.name}: {message}", file=sys.stderr, flush=True)
            raise SystemExit(1)
