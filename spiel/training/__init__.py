"""spiel-train's engine around the transformers Trainer: its config schema (``schema.py``, no hydra) with the
Hydra registration and ``validate`` (``hydra_config.py``), the run (``run.py``), the Trainer subclass
(``trainer.py``, built on the public ``hf_trainer.SpielTrainerMixin``), atomic checkpoints
(``checkpoints.py``), the run dir (``rundir.py``), the SpIEL selector callback, metrics log and summary,
parameter ages (Figure 2), wandb, sweep reporting and DDP helpers."""
