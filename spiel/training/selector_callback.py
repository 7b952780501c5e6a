"""The SpIEL selector as a Trainer callback: created when training starts (it needs the total number of
optimizer steps), stepped after every optimizer step, saved into every checkpoint and restored on resume.

The callback is a thin layer over ``SpielModel.make_selector``: the same calls a plain PyTorch loop makes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import TrainerCallback

STATE_FILE = "selector.pt"


class SelectorCallback(TrainerCallback):
    def __init__(self, model, optimizer, resume_from: str | None = None):
        self.model = model  # the SpielModel (not the DDP wrapper)
        self.optimizer = optimizer  # our SparseAdamW / SparseSM3 (not accelerate's wrapper)
        self.resume_from = resume_from
        self.selector = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.selector = self.model.make_selector(self.optimizer, total_steps=state.max_steps)
        if self.resume_from is not None:
            path = Path(self.resume_from) / STATE_FILE
            if not path.is_file():
                raise FileNotFoundError(f"{self.resume_from} has no {STATE_FILE}: not a SpIEL training checkpoint")
            device = next(iter(self.model.deltas.values())).values.device
            self.selector.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        if self.selector.t != state.global_step:
            raise RuntimeError(f"selector is at step {self.selector.t} but the trainer at {state.global_step}")

    def on_step_end(self, args, state, control, **kwargs):
        self.selector.step()

    def on_train_end(self, args, state, control, **kwargs):
        if self.selector is not None:
            self.selector.close()

    def save_state(self, directory: Path) -> None:
        """Called by SpielTrainer while it writes a checkpoint (before sealing it)."""
        torch.save(self.selector.state_dict(), Path(directory) / STATE_FILE)
