"""Validation while training: a held-out set, its loss in the metrics log, the best of it in the summary,
and `loss.png` (training and validation loss against steps).

    eval_fraction=0.05   hold out 5% of the tokenized training examples (seeded by data.seed)
    eval_data=FILE       or validate on a file of its own (any format a data source accepts)
    eval_steps=50        evaluate every 50 optimizer steps (0: only at the end); always at the end

The Trainer evaluates and logs `eval_loss`: the held-out examples in order, in batches of micro_batch_size,
each batch's mean loss over its label tokens, averaged over the batches. MetricsLogCallback writes it to
`metrics.jsonl`; the logger (wandb, tensorboard) gets it too.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from transformers import TrainerCallback

log = logging.getLogger(__name__)
LOSS_PNG = "loss.png"


def eval_split(dataset, c, tokenizer, data_cfg, build):
    """`(train, eval or None)` from the settings `c` (eval_fraction / eval_data); `build` is
    spiel.data.build_train_dataset (tokenizes a file with the training pipeline)."""
    if c.eval_data:
        source = {"name": "eval", "path": str(c.eval_data)}
        if data_cfg.get("columns"):  # data=own's column names hold for its held-out file too
            source["columns"] = data_cfg.get("columns")
        cfg = {
            "name": "eval",
            "sources": [source],
            "seed": data_cfg.get("seed", 42),
            "shuffle": False,
            "on_bad_record": data_cfg.get("on_bad_record", "error"),
            "template": data_cfg.get("template") or "tulu",
        }
        held_out, _ = build(
            cfg, tokenizer, max_seq_len=c.max_seq_len, cache_dir=c.data_cache_dir, num_proc=c.data_num_proc
        )
        return dataset, held_out
    if c.eval_fraction > 0:
        n_eval = max(1, round(len(dataset) * c.eval_fraction))
        if n_eval >= len(dataset):
            raise ValueError(f"eval_fraction={c.eval_fraction} leaves no training examples of {len(dataset)}")
        split = dataset.train_test_split(test_size=n_eval, seed=int(data_cfg.get("seed", 42)), shuffle=True)
        return split["train"], split["test"]
    return dataset, None


def read_losses(metrics_file: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(training, eval) losses as (step, loss) from the metrics log; lines cut by a kill are skipped."""
    train, evals = [], []
    if Path(metrics_file).is_file():
        for line in Path(metrics_file).read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if "loss" in record:
                train.append((record["step"], float(record["loss"])))
            if "eval_loss" in record:
                evals.append((record["step"], float(record["eval_loss"])))
    return train, evals


def eval_summary(metrics_file: Path) -> dict:
    """`best_eval_loss`, `best_eval_step` and the last `eval_loss` ({} without evaluations)."""
    _, evals = read_losses(metrics_file)
    if not evals:
        return {}
    best_step, best = min(evals, key=lambda e: (e[1], e[0]))
    return {"eval_loss": evals[-1][1], "best_eval_loss": best, "best_eval_step": best_step}


def plot_losses(metrics_file: Path, path: Path) -> Path | None:
    """Training and eval loss against steps; None when nothing has been logged yet."""
    train, evals = read_losses(metrics_file)
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="training loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="o", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


class LossPlotCallback(TrainerCallback):
    """Redraws `loss.png` from the metrics log at every checkpoint save (rank 0)."""

    def __init__(self, metrics_file: Path, path: Path, enabled: bool = True):
        self.metrics_file, self.path, self.enabled = Path(metrics_file), Path(path), enabled

    def on_save(self, args, state, control, **kwargs):
        if self.enabled and state.is_world_process_zero:
            plot_losses(self.metrics_file, self.path)
