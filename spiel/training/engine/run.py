"""One training run, from a composed config to the final checkpoint and summary.

    summary = run_training(cfg, run_dir, run_name)

Order matters: the config is validated first (nothing is loaded before it passes), then the run dir is
prepared on rank 0 (fresh / resume / overwrite), then tokenizer, data, base model, method wrapper,
optimizer and callbacks are built and handed to SpielTrainer.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from spiel.data.chat_template import attach_chat_template_or_warn
from spiel.io.model_source import HOW
from spiel.training.config.hydra_config import ConfigError, check_model_exists, validate
from spiel.training.config.resume_check import check_resume_config, record_training_data
from spiel.training.engine import atomic_checkpoints as checkpoints
from spiel.training.engine.divergence import DivergenceGuard, check_final_logits
from spiel.training.engine.failures import OutputError, writing
from spiel.training.engine.rundir import FINAL_DIR, prepare_run_dir
from spiel.training.launch.distributed import (
    barrier,
    broadcast_object,
    env_world_size,
    gather_objects,
    trainable_digest,
)
from spiel.training.loggers import tensorboard_logger, wandb_logger
from spiel.training.loggers.metrics import (
    METRICS_FILE,
    LossWindowState,
    MetricsLogCallback,
    last_logged_loss,
    peak_memory,
    summary_line,
    truncate_metrics,
)
from spiel.training.loggers.validation import (
    LOSS_PNG,
    LossPlotCallback,
    eval_split,
    eval_summary,
    plot_losses,
)
from spiel.training.methods import get_method

log = logging.getLogger("spiel.cli.train")


def enable_activation_checkpointing(model) -> None:
    """Non-reentrant checkpointing on the underlying transformers model (gradients reach the deltas or
    adapters inside checkpointed blocks although the inputs of each block need no gradient)."""
    inner = getattr(model, "model", model) if type(model).__name__ == "SpielModel" else model
    kwargs = {"use_reentrant": False}
    if hasattr(inner, "activation_checkpointing_enable"):
        inner.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def eval_command(final_dir: Path, settings) -> str:
    bench = "demo" if settings.cfg.data.get("name") == "demo" else "mmlu"
    quant = " quant=nf4" if settings.quant == "nf4" else ""
    return f"spiel-eval ckpt={final_dir} bench={bench}{quant}"


def _trainer_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "trainer_state.json").read_text())


def _finished(checkpoint: Path) -> bool:
    """A checkpoint saved at the last step (the Trainer would train one step too many from it)."""
    state = _trainer_state(checkpoint)
    return state.get("max_steps", 0) > 0 and state["global_step"] >= state["max_steps"]


def _save_final(method, model, tokenizer, run_dir: Path) -> Path:
    staged = checkpoints.staging_dir(run_dir) / FINAL_DIR
    checkpoints.clean_staging(run_dir)
    attach_chat_template_or_warn(tokenizer)  # final/'s tokenizer renders the Tülu format training used
    try:
        with writing(run_dir / FINAL_DIR, f"saving {FINAL_DIR}/: cannot write"):
            staged.mkdir(parents=True)
            method.save(model, staged, tokenizer=tokenizer)
            checkpoints.seal(staged, kind="final")
    except OutputError:
        checkpoints.clean_staging(run_dir)
        raise
    final = checkpoints.publish(staged, run_dir / FINAL_DIR)
    checkpoints.clean_staging(run_dir)
    return final


def run_training(cfg: DictConfig, run_dir: Path, run_name: str) -> dict:
    start = time.time()
    run_dir = Path(run_dir)
    settings = validate(cfg, world_size=env_world_size())  # raises ConfigError before anything loads
    check_model_exists(settings)
    c = settings.cfg
    method = get_method(settings.method.name)
    if c.parallel == "fsdp":
        from spiel.training.launch.parallel import check_fsdp_support

        check_fsdp_support()

    import transformers

    from spiel.data import DataCollatorForSpiel, build_train_dataset
    from spiel.io.base_model import build_meta_model, load_base_model, load_tokenizer
    from spiel.model.targets import model_numel
    from spiel.training.config.args import training_arguments
    from spiel.training.engine.trainer import SpielTrainer

    # target_modules and budgets against the model's module names, before any weight loads
    try:
        meta_model = build_meta_model(c.model["name_or_path"], c.model.get("revision"))
    except OSError as e:  # a hub id that cannot be fetched (no network, no such repo, gated)
        raise ConfigError(f"model.name_or_path: could not load the config of {c.model['name_or_path']!r}: {e}. "
                          f"{HOW}") from None
    method.check_on_meta(meta_model, settings.method)

    use_wandb = c.logger.name == "wandb"
    args = training_arguments(settings, run_dir, method.trainer_optim(settings.method), use_wandb, run_name)
    is_main = args.process_index == 0
    resume_from = None
    if is_main:
        resume_from = prepare_run_dir(run_dir, c.resume, c.overwrite)
        if resume_from is not None:  # before config.yaml is rewritten: a refusal leaves the run as it was
            check_resume_config(resume_from, cfg, c.resume_allow_config_changes)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    resume_from = broadcast_object(None if resume_from is None else str(resume_from))
    if resume_from is not None:
        log.info("resuming from %s", resume_from)
        if is_main:
            truncate_metrics(run_dir / METRICS_FILE, checkpoints.checkpoint_step(Path(resume_from)) or 0)
    if is_main and use_wandb:
        wandb_logger.start(c.logger, run_dir, run_name, OmegaConf.to_container(cfg, resolve=True))

    transformers.set_seed(c.seed)
    model_cfg = c.model
    tokenizer = load_tokenizer(model_cfg["name_or_path"], revision=model_cfg.get("revision"))
    with args.main_process_first(desc="tokenizing the training data"):
        dataset, data_stats = build_train_dataset(c.data, tokenizer, max_seq_len=c.max_seq_len,
                                                  cache_dir=c.data_cache_dir, num_proc=c.data_num_proc)
        dataset, eval_dataset = eval_split(dataset, c, tokenizer, c.data, build_train_dataset)
    log.info("training data: %d examples", len(dataset))
    if is_main:
        record_training_data(run_dir, data_stats, None if resume_from is None else Path(resume_from),
                             c.resume_allow_config_changes)

    base = load_base_model(model_cfg["name_or_path"], dtype=settings.dtype, quant=settings.quant,
                           device=args.device, revision=model_cfg.get("revision"))
    total_params = model_numel(base)
    model = method.wrap(base, settings.method, seed=c.seed, quantized=settings.quant == "nf4")
    if c.activation_checkpointing:
        enable_activation_checkpointing(model)
    optimizer = method.make_optimizer(model, settings.method, settings.method.lr, settings.method.weight_decay)
    metrics_cb = MetricsLogCallback(run_dir / METRICS_FILE)
    guard = DivergenceGuard(model, settings.method.lr)
    loss_window = LossWindowState(resume_from)
    trainer = SpielTrainer(
        model=model, args=args, train_dataset=dataset, eval_dataset=eval_dataset,
        data_collator=DataCollatorForSpiel(tokenizer), processing_class=tokenizer, optimizers=(optimizer, None),
        callbacks=[guard, loss_window, metrics_cb,
                   LossPlotCallback(run_dir / METRICS_FILE, run_dir / LOSS_PNG)],
        state_savers=[loss_window],
        save_total_limit=c.save_total_limit,
    )
    loss_window.trainer = trainer
    if c.parallel == "fsdp":
        from spiel.training.launch.parallel import attach, shard_frozen_base

        shard_frozen_base(model)
        attach(trainer, model)
    if c.loss_reduction == "micro_batch":
        trainer.model_accepts_loss_kwargs = False  # mean per micro-batch, averaged (open-instruct)
    train_start = time.time()
    if resume_from is not None and _finished(Path(resume_from)):
        log.info("%s is the last step of this run: nothing left to train", resume_from)
        trainer._load_from_checkpoint(resume_from)
        trainer.state.global_step = trainer.state.max_steps = _trainer_state(Path(resume_from))["global_step"]
        train_loss = None
    else:
        train_loss = trainer.train(resume_from_checkpoint=resume_from).training_loss
        train_loss = loss_window.train_loss if loss_window.train_loss is not None else train_loss
    train_seconds = time.time() - train_start
    if eval_dataset is not None and not (c.eval_steps and trainer.state.global_step % c.eval_steps == 0):
        trainer.evaluate()  # the end of the run, unless eval_steps just did
    start_step = checkpoints.checkpoint_step(Path(resume_from)) or 0 if resume_from else 0
    steps_this_run = trainer.state.global_step - start_step

    first = [dataset[i] for i in range(min(len(dataset), c.micro_batch_size))]
    probe = trainer._prepare_inputs(trainer.data_collator(first))
    check_final_logits(model, probe, settings.method.lr)  # finite values can still give inf logits
    digests = gather_objects(trainable_digest(model))
    if len(set(digests)) != 1:
        raise RuntimeError(f"data-parallel ranks ended with different trained weights: {digests}")
    summary = {}
    if is_main:
        final_dir = _save_final(method, model, tokenizer, run_dir)
        extras = method.after_training(model, run_dir, trainer.state.max_steps, plot=c.plot_ages)
        extras.update(eval_summary(run_dir / METRICS_FILE), loss_png=str(plot_losses(run_dir / METRICS_FILE,
                                                                                     run_dir / LOSS_PNG)))
        memory, memory_what = peak_memory()
        summary = {
            "method": method.name, "quant": settings.quant, "run_dir": str(run_dir),
            "final_checkpoint": str(final_dir), "final_format": method.final_format,
            "steps": trainer.state.global_step, "max_steps": trainer.state.max_steps,
            "steps_this_run": steps_this_run, "resumed_from": resume_from,
            "final_loss": last_logged_loss(run_dir / METRICS_FILE), "train_loss": train_loss,
            "trainable": method.num_trainable(model), "total_params": total_params,
            "peak_memory_gib": memory, "peak_memory_what": memory_what,
            "seconds_per_step": train_seconds / max(1, steps_this_run), "wall_seconds": time.time() - start,
            "world_size": settings.world_size, "grad_accum": settings.grad_accum,
            "effective_batch": c.batch_size, "examples": len(dataset),
            "dropped_examples": data_stats.get("dropped"), "rank_digests": digests,
            "eval_command": eval_command(final_dir, settings), **extras,
        }
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        if use_wandb:
            wandb_logger.record_summary(summary)
        elif c.logger.name == "tensorboard":
            tensorboard_logger.record_summary(trainer, summary, OmegaConf.to_container(cfg, resolve=True))
        line = summary_line(summary)
        log.info(line)
        print(line, flush=True)
        print(f"checkpoint: {final_dir} ({method.final_format})", flush=True)
        print(f"evaluate:   {summary['eval_command']}", flush=True)
    barrier()
    return summary
