"""SpIEL inside any transformers ``Trainer`` (``transformers.Trainer``, TRL's ``SFTTrainer``, ...).

    from spiel import spiel_trainer
    trainer = spiel_trainer(Trainer)(model=spiel_model, args=TrainingArguments(...), train_dataset=...)
    trainer.train()                                   # or train(resume_from_checkpoint=True)

``spiel_trainer(cls)`` is ``cls`` with ``SpielTrainerMixin`` in front; ``class MyTrainer(SpielTrainerMixin,
SFTTrainer)`` is the same. For a ``SpielModel`` the mixin

- builds spiel's optimizer (SparseAdamW for ``ag``, SparseSM3 for ``ma``) from ``args.learning_rate``,
  ``args.weight_decay`` and ``args.adam_*`` unless one is passed in ``optimizers=``;
- runs the selector after every optimizer step (``SelectorCallback``);
- saves the model as its delta checkpoint (``SpielModel.save_pretrained``), never the frozen base, both
  in ``save_model`` and in every ``checkpoint-N/``, plus the selector state there;
- evaluates with the wrapped model's label columns, so ``evaluate()`` returns ``eval_loss``;
- on ``train(resume_from_checkpoint=...)`` restores the delta and the selector, so the run continues
  exactly as an uninterrupted one (the Trainer restores optimizer, scheduler, RNG and data order).

Any other model passes through to the Trainer unchanged. spiel-train's ``SpielTrainer`` is built on it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from spiel.integrations.selector_callback import STATE_FILE, SelectorCallback
from spiel.model.spiel_model import SpielModel

TRAINING_ARGS_NAME = "training_args.bin"  # the Trainer's name for it


class SpielTrainerMixin:
    """Put before a ``transformers.Trainer`` subclass: ``class T(SpielTrainerMixin, Trainer)``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.spiel_resume_from: str | None = None
        self._selector_callback = None
        model = self.spiel_model()
        if model is not None:
            self._label_names_of_wrapped(model)
            self._check_optimizer(model)
            self._selector_callback = SelectorCallback(self)
            self.add_callback(self._selector_callback)

    def spiel_model(self) -> SpielModel | None:
        """The SpielModel being trained (under any wrapper), or None for another model."""
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        return model if isinstance(model, SpielModel) else None

    def _label_names_of_wrapped(self, model: SpielModel) -> None:
        """The Trainer finds the label columns in ``type(model).forward``'s signature; SpielModel's is
        ``**kwargs``, so it found none and ``evaluate()`` returned no ``eval_loss`` (``metric_for_best_model``,
        ``load_best_model_at_end`` and early stopping need it). Take them from the wrapped model's class."""
        if self.args.label_names is None and not self.label_names:
            from transformers.utils import can_return_loss, find_labels

            self.label_names = find_labels(type(model.model))
            self.can_return_loss = can_return_loss(type(model.model))

    def _check_optimizer(self, model: SpielModel) -> None:
        from spiel.selection import method_spec

        expected = method_spec(model.spiel_config.method).optimizer
        if getattr(self, "optimizer_cls_and_kwargs", None) is not None:
            raise TypeError(
                "optimizer_cls_and_kwargs cannot be used with a SpielModel: SpIEL needs spiel's "
                f"{expected.__name__}. Leave it unset (it is built from args.learning_rate and "
                "args.weight_decay) or pass optimizers=(model.make_optimizer(...), None)."
            )
        if self.optimizer is not None and not isinstance(self.optimizer, expected):
            raise TypeError(
                f"method {model.spiel_config.method!r} needs spiel's {expected.__name__}, got "
                f"{type(self.optimizer).__name__} in optimizers=: leave it out (it is built from "
                "args.learning_rate and args.weight_decay) or pass model.make_optimizer(...)."
            )

    def create_optimizer(self, model=None):
        spiel_model = self.spiel_model()
        if spiel_model is None:
            return super().create_optimizer(model)
        if self.optimizer is None:
            from spiel.selection import method_spec

            kwargs = {}
            if method_spec(spiel_model.spiel_config.method).adam_options:
                kwargs = {
                    "betas": (self.args.adam_beta1, self.args.adam_beta2),
                    "eps": self.args.adam_epsilon,
                }
            self.optimizer = spiel_model.make_optimizer(
                self.args.learning_rate, weight_decay=self.args.weight_decay, **kwargs
            )
        return self.optimizer

    # -- training and resuming -----------------------------------------------------------------------
    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        self.spiel_resume_from = None  # set by _load_from_checkpoint when resuming
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        spiel_model = self.spiel_model()
        if spiel_model is None:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        spiel_model.restore_delta(resume_from_checkpoint)
        self.spiel_resume_from = str(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        spiel_model = self.spiel_model()
        if spiel_model is None:
            return super()._load_best_model()
        spiel_model.restore_delta(self.state.best_model_checkpoint)

    # -- saving ----------------------------------------------------------------------------------------
    def _save_checkpoint(self, model, trial) -> None:
        if (
            self._selector_callback is not None
            and self._selector_callback.selector is not None
            and self.args.should_save
        ):
            # Written first: the Trainer writes trainer_state.json (what marks a checkpoint) after it.
            directory = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            directory.mkdir(parents=True, exist_ok=True)
            self._selector_callback.save_state(directory)
        super()._save_checkpoint(model, trial)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        spiel_model = self.spiel_model()
        if spiel_model is None:
            return super()._save(output_dir, state_dict=state_dict)
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        tokenizer = self.processing_class or getattr(self.data_collator, "tokenizer", None)
        spiel_model.save_pretrained(output_dir, tokenizer=tokenizer, compact=False)  # resume needs grown_at
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))


def spiel_trainer(trainer_cls: type) -> type:
    """``trainer_cls`` (``transformers.Trainer`` or a subclass, e.g. ``trl.SFTTrainer``) able to train
    a SpielModel: the subclass ``(SpielTrainerMixin, trainer_cls)``."""
    from transformers import Trainer

    if not (isinstance(trainer_cls, type) and issubclass(trainer_cls, Trainer)):
        raise TypeError(f"spiel_trainer() takes a transformers.Trainer class, got {trainer_cls!r}")
    if issubclass(trainer_cls, SpielTrainerMixin):
        return trainer_cls
    return type(f"Spiel{trainer_cls.__name__}", (SpielTrainerMixin, trainer_cls), {})


__all__ = ["STATE_FILE", "SpielTrainerMixin", "spiel_trainer"]
