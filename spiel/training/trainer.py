"""SpielTrainer: the transformers Trainer with our method's saving/loading and atomic checkpoints.

What it changes, and why:
- ``_save``: a SpIEL model is saved as its sparse delta (``save_pretrained``), never through
  ``state_dict()`` (which would hold the frozen base weights). peft and full models keep the
  Trainer's own saving (adapter / transformers formats).
- ``_load_from_checkpoint``: on resume, the method reloads what ``_save`` wrote.
- ``_save_checkpoint``: the Trainer's checkpoint (model, optimizer, scheduler, RNG, trainer state) plus
  the state of ``state_savers`` (the SpIEL selector) is written into ``<run>/.staging/checkpoint-N``,
  sealed and renamed into place (see ``spiel.training.checkpoints``), then old ones are rotated.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from transformers import Trainer
from transformers.trainer import TRAINING_ARGS_NAME

from spiel.model import SpielModel

from . import checkpoints
from .distributed import barrier


class SpielTrainer(Trainer):
    def __init__(self, *args, method, state_savers=(), save_total_limit: int = 2, **kwargs):
        self.method = method
        self.state_savers = list(state_savers)
        self.keep_checkpoints = save_total_limit
        self._staging_root: Path | None = None
        self.parallel_wrapper = None  # parallel=fsdp: set by spiel.training.parallel.attach
        super().__init__(*args, **kwargs)

    def _wrap_model(self, model, training: bool = True, dataloader=None):
        # parallel=fsdp: the base is sharded already and the deltas' gradients are averaged by a callback;
        # a DDP wrap around its DTensor weights would fail.
        if training and self.parallel_wrapper is not None:
            return self.parallel_wrapper
        return super()._wrap_model(model, training, dataloader)

    # -- where checkpoints go ------------------------------------------------------------------------
    def _get_output_dir(self, trial) -> str:
        if self._staging_root is not None:
            return str(self._staging_root)
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = Path(self.args.output_dir)
        staging = checkpoints.staging_dir(run_dir)
        name = f"checkpoint-{self.state.global_step}"
        if self.args.should_save:
            shutil.rmtree(staging / name, ignore_errors=True)
            staging.mkdir(parents=True, exist_ok=True)
        barrier()
        self._staging_root = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_root = None
        staged = staging / name
        if self.args.should_save:
            for saver in self.state_savers:
                saver.save_state(staged)
        barrier()  # every rank has written its RNG state
        if self.args.should_save:
            checkpoints.seal(staged, step=self.state.global_step, kind="checkpoint")
            checkpoints.publish(staged, run_dir / name)
            checkpoints.rotate(run_dir, self.keep_checkpoints)
        barrier()

    # -- the model inside a checkpoint ---------------------------------------------------------------
    def _unwrapped(self):
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        model = self._unwrapped()
        if not isinstance(model, SpielModel):
            return super()._save(output_dir, state_dict=state_dict)
        if not self.args.should_save:
            return
        output_dir = Path(output_dir or self.args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        self.method.save(model, output_dir, tokenizer=self.processing_class)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        target = model if model is not None else self.model
        if not self.method.load_weights(self.accelerator.unwrap_model(target), Path(resume_from_checkpoint)):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
