"""TrainingArguments from the validated config."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import TrainingArguments


def training_arguments(
    settings, run_dir: Path, optim: str, report_to_wandb: bool, run_name: str
) -> TrainingArguments:
    c = settings.cfg
    save = c.save_steps > 0
    return TrainingArguments(
        output_dir=str(run_dir),
        run_name=run_name,
        seed=c.seed,
        data_seed=c.seed,
        learning_rate=settings.method.lr,
        weight_decay=settings.method.weight_decay,
        optim=optim,
        num_train_epochs=c.epochs,
        max_steps=c.max_steps,
        per_device_train_batch_size=c.micro_batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        lr_scheduler_type=c.lr_scheduler,
        warmup_steps=c.warmup_ratio,  # a float < 1: a fraction of the total steps (rounded up)
        max_grad_norm=c.max_grad_norm,
        logging_steps=c.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if c.eval_steps > 0 else "no",  # > 0 only with a held-out set (validate)
        eval_steps=c.eval_steps if c.eval_steps > 0 else None,
        per_device_eval_batch_size=c.micro_batch_size,
        label_names=["labels"],  # the wrappers' forward(**kwargs) hides it; without it no eval loss
        # True would log a NaN step's loss as the mean of the earlier ones (0.0 right after a log):
        # spiel stops a diverged run instead (DivergenceGuard), so nothing non-finite is hidden
        logging_nan_inf_filter=False,
        save_strategy="steps" if save else "no",
        save_steps=c.save_steps if save else 500,
        save_total_limit=None,  # SpielTrainer rotates the complete checkpoints itself
        report_to=["wandb"]
        if report_to_wandb
        else ["tensorboard"]
        if c.logger.name == "tensorboard"
        else "none",
        disable_tqdm=not c.progress_bar,
        remove_unused_columns=False,  # the SpielModel wrapper's forward takes **kwargs
        dataloader_num_workers=c.num_workers,
        dataloader_pin_memory=torch.cuda.is_available() and c.device != "cpu",
        ddp_find_unused_parameters=False,
        ddp_broadcast_buffers=False,  # SpIEL indices are buffers; the selector keeps ranks in agreement
        use_cpu=c.device == "cpu",
        bf16=False,  # weights are loaded in their training dtype; no autocast
        fp16=False,
        activation_checkpointing=False,  # enabled by the runner (non-reentrant) for every method
    )
