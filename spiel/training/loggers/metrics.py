"""The local metrics log (``metrics.jsonl``: one JSON object per Trainer log event, always written) and
the end-of-run summary line."""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

METRICS_FILE = "metrics.jsonl"


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only the records up to ``last_step`` (a resumed run rewrites what came after its checkpoint)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                kept.append(line)
        except ValueError:  # a line cut by a kill
            continue
    path.write_text("".join(k + "\n" for k in kept))


def last_logged_loss(path: Path) -> float | None:
    """The last training loss in the metrics log (this run's or, after a resume, the earlier one's)."""
    loss = None
    if Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            try:
                loss = json.loads(line).get("loss", loss)
            except ValueError:
                continue
    return loss


class MetricsLogCallback(TrainerCallback):
    """Appends every log event (loss, learning rate, grad norm, ...) with step, epoch and wall time."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, "time": time.time(), **logs}
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=float) + "\n")


def peak_memory() -> tuple[float, str]:
    """(GiB, what was measured): CUDA peak allocation, else the process's peak resident memory."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**30, "GPU peak allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = rss if sys.platform == "darwin" else rss * 1024
    return rss_bytes / 2**30, "peak RSS"


def summary_line(summary: dict) -> str:
    def fmt_loss(v):
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"

    return (
        f"spiel-train: {summary['method']} · {summary['steps']} steps · loss {fmt_loss(summary['final_loss'])} "
        f"(run mean {fmt_loss(summary['train_loss'])}) · tunable {summary['trainable']:,} of "
        f"{summary['total_params']:,} ({100 * summary['trainable'] / max(1, summary['total_params']):.2f}%) · "
        f"{summary['peak_memory_what']} {summary['peak_memory_gib']:.2f} GiB · "
        f"{summary['seconds_per_step']:.3f} s/step · {summary['wall_seconds']:.0f} s in all"
    )


LOSS_WINDOW_FILE = "loss_window.json"


class LossWindowState(TrainerCallback):
    """The Trainer's logging window (the loss summed since the last log, the step of that log, the loss
    summed over the run) saved into every checkpoint and restored on resume. Without it a resumed run
    logs its first loss as the mean of the steps since the resume only, so its metrics.jsonl would differ
    from an uninterrupted run's at every step up to the next log (and in its final train_loss)."""

    def __init__(self, resume_from: str | None = None):
        self.resume_from = resume_from
        self.trainer = None  # set once the Trainer exists (it owns the window)
        self.train_loss: float | None = None  # the run's mean loss, once training ends

    def save_state(self, directory: Path) -> None:
        t = self.trainer
        window = {
            "tr_loss": float(t._tr_loss.item()),
            "last_logged": int(t._globalstep_last_logged),
            "total_loss": float(t._total_loss_scalar),
        }
        (Path(directory) / LOSS_WINDOW_FILE).write_text(json.dumps(window))

    def on_train_begin(self, args, state, control, **kwargs):
        path = Path(self.resume_from or "") / LOSS_WINDOW_FILE
        if self.resume_from is None or not path.is_file():
            return
        window = json.loads(path.read_text())
        t = self.trainer
        t._tr_loss += window["tr_loss"]
        t._globalstep_last_logged = window["last_logged"]
        t._total_loss_scalar = window["total_loss"]

    def on_log(self, args, state, control, logs=None, **kwargs):
        # transformers reports train_loss over the steps of this train() call; the run's is over all of
        # them (computed as an uninterrupted run computes it). Runs before the metrics log writes `logs`.
        if logs and "train_loss" in logs and self.trainer is not None:
            logs["train_loss"] = self.trainer._total_loss_scalar / max(state.global_step, 1)
            self.train_loss = logs["train_loss"]
