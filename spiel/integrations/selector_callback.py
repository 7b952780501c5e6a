"""The SpIEL selector inside a Trainer run (added by ``SpielTrainerMixin``; not used on its own).

Created when training starts (it needs the total number of optimizer steps and the optimizer the
Trainer steps), stepped after every optimizer step, saved into every checkpoint and restored on resume:
the same calls a plain PyTorch loop makes around ``SpielModel.make_selector``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import TrainerCallback

STATE_FILE = "selector.pt"


def inner_optimizer(optimizer):
    """The optimizer under accelerate's wrapper (which keeps it as ``.optimizer``)."""
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


class SelectorCallback(TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer  # a SpielTrainerMixin: its SpielModel, optimizer and resume checkpoint
        self.selector = None

    def on_train_begin(self, args, state, control, **kwargs):
        model = self.trainer.spiel_model()
        self.selector = model.make_selector(
            inner_optimizer(self.trainer.optimizer), total_steps=state.max_steps
        )
        resume_from = self.trainer.spiel_resume_from
        if resume_from is not None:
            path = Path(resume_from) / STATE_FILE
            if not path.is_file():
                raise FileNotFoundError(
                    f"{resume_from} has no {STATE_FILE}: not a checkpoint of SpIEL training "
                    "(its selector state is missing), so training cannot resume from it"
                )
            device = next(iter(model.deltas.values())).values.device
            try:
                self.selector.load_state_dict(torch.load(path, map_location=device, weights_only=True))
            except ValueError as refused:  # one message from spiel-train, not a traceback
                from spiel.checkpoint.fingerprint import CheckpointMismatchError

                raise CheckpointMismatchError(f"cannot resume from {path}: {refused}") from refused
        if self.selector.t != state.global_step:
            raise RuntimeError(
                f"selector is at step {self.selector.t} but the trainer at {state.global_step}"
            )

    def on_step_end(self, args, state, control, **kwargs):
        self.selector.step()

    def on_train_end(self, args, state, control, **kwargs):
        if self.selector is not None:
            self.selector.close()
            self.selector = None  # the model counts as trained without a selector again

    def save_state(self, directory) -> None:
        torch.save(self.selector.state_dict(), Path(directory) / STATE_FILE)
