"""spiel-train's engine around the transformers Trainer, in four groups:

- ``config/``: the schema (no hydra), its Hydra registration and ``validate``, TrainingArguments, the checks
  made before a run starts and on resume;
- ``engine/``: the run's phases, the Trainer subclass (on the public ``spiel.integrations`` mixin), the plain
  loop, atomic checkpoints, the run directory, divergence and failure handling;
- ``launch/``: process groups, SLURM/submitit, FSDP, sweeps;
- ``loggers/``: the metrics log and summary, validation, TensorBoard, wandb;

and ``methods/``, the method table (SpIEL, LoRA, (IA)3, full fine-tuning) with what each builds."""
