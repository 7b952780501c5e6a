"""SpielTrainer: the transformers Trainer with SpIEL support and atomic checkpoints.

What it changes, and why:
- SpIEL models are handled by ``SpielTrainerMixin`` (``hf_trainer.py``), the same public piece users put
  in front of their own Trainer: delta-sized saving and loading, spiel's optimizer, the selector and
  its state in every checkpoint. peft and full models keep the Trainer's own saving.
- ``_save_checkpoint``: the Trainer's checkpoint (model, optimizer, scheduler, RNG, trainer state, the
  selector state) is written into ``<run>/.staging/checkpoint-N``, sealed and renamed into place (see
  ``spiel.training.engine.atomic_checkpoints``), then old ones are rotated.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from transformers import Trainer

from spiel.integrations.hf_trainer import SpielTrainerMixin
from spiel.training.engine import atomic_checkpoints as checkpoints
from spiel.training.engine.failures import OutputError, writing
from spiel.training.launch.distributed import barrier


class SpielTrainer(SpielTrainerMixin, Trainer):
    def __init__(self, *args, state_savers=(), save_total_limit: int = 2, **kwargs):
        self.state_savers = list(state_savers)  # run state beyond the Trainer's (the logging window)
        self.keep_checkpoints = save_total_limit
        self._staging_root: Path | None = None
        self.parallel_wrapper = None  # parallel=fsdp: set by spiel.training.launch.parallel.attach
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
        name = f"checkpoint-{self.state.global_step}"
        try:
            with writing(run_dir / name, f"saving {name}: cannot write"):
                self._save_checkpoint_atomically(model, trial)
        except OutputError:
            checkpoints.clean_staging(run_dir)  # the half-written copy; the checkpoints before stay
            raise

    def _save_checkpoint_atomically(self, model, trial) -> None:
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
