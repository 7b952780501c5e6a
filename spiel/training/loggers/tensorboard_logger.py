"""TensorBoard for ``logger=tensorboard``: the Trainer's TensorBoardCallback writes the logged scalars to
``<run>/runs/<date>_<host>/``; at the end of the run the same event directory gets the run's summary,
the resolved config as hparams (TensorBoard's HParams dashboard) with ``best_eval_loss`` (logged at
``best_eval_step``) as its metric, as ``summary.json`` and the wandb run summary have them."""

from __future__ import annotations

from spiel.training.loggers.wandb_logger import SUMMARY_KEYS

METRIC = "summary/best_eval_loss"


def flat_hparams(config: dict, prefix: str = "") -> dict:
    """``{"a/b": value}`` of a nested config; lists as text, None left out (TensorBoard takes numbers,
    strings and booleans only)."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_hparams(value, f"{name}/"))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        elif value is not None:
            out[name] = str(value)
    return out


def events_dir(trainer) -> str | None:
    from transformers.integrations import TensorBoardCallback

    callback = next(
        (cb for cb in trainer.callback_handler.callbacks if isinstance(cb, TensorBoardCallback)), None
    )
    return getattr(callback, "logging_dir", None)


def record_summary(trainer, summary: dict, config: dict) -> None:
    """Write the hparams and the best eval loss into the Trainer's event directory; nothing without a
    validation set (the HParams dashboard needs a metric)."""
    log_dir = events_dir(trainer)
    best, step = (summary.get(key) for key in SUMMARY_KEYS)
    if log_dir is None or best is None:
        return
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    experiment, start, end = hparams(flat_hparams(config), {METRIC: best})
    with SummaryWriter(log_dir=log_dir) as writer:
        for part in (experiment, start, end):
            writer.file_writer.add_summary(part)
        writer.add_scalar(METRIC, best, step)
