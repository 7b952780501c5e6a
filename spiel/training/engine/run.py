"""One training run, from a composed config to the final checkpoint and summary.

    summary = run_training(cfg, run_dir, run_name)

The phases, in order (each a function below, filling in its part of :class:`Run`): check the config
(nothing is loaded before it passes), prepare the run dir on rank 0 (fresh / resume / overwrite), load the
data, build the model, build the trainer, train, save and summarize.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from spiel.data.chat_template import attach_chat_template_or_warn
from spiel.io.model_source import HOW
from spiel.training.config.hydra_config import ConfigError, check_model_exists, validate
from spiel.training.config.resume_check import check_resume_config, record_training_data
from spiel.training.engine import atomic_checkpoints as checkpoints
from spiel.training.engine import run_lock
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


def _save_final(method, model, tokenizer, run_dir: Path, template: str = "tulu") -> Path:
    staged = checkpoints.staging_dir(run_dir) / FINAL_DIR
    checkpoints.clean_staging(run_dir)
    if (
        template == "tulu"
    ):  # final/'s tokenizer renders the format training used (data.template=model: its own)
        attach_chat_template_or_warn(tokenizer)
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


@dataclass
class Run:
    """What the phases of one run hand each other (each phase fills in its part)."""

    cfg: DictConfig
    run_dir: Path
    run_name: str
    settings: Any = None
    method: Any = None
    args: Any = None
    resume_from: Optional[str] = None
    tokenizer: Any = None
    data: tuple = ()  # (train dataset, eval dataset or None, build stats)
    model: Any = None
    total_params: int = 0
    trainer: Any = None
    loss_window: Any = None
    trained: dict = field(default_factory=dict)  # train_loss, train_seconds, steps_this_run, digests
    start: float = field(default_factory=time.time)

    @property
    def c(self):
        return self.settings.cfg

    @property
    def is_main(self) -> bool:
        return self.args.process_index == 0

    @property
    def use_wandb(self) -> bool:
        return self.c.logger.name == "wandb"


def run_training(cfg: DictConfig, run_dir: Path, run_name: str) -> dict:
    run = Run(cfg, Path(run_dir), run_name)
    check_config(run)
    prepare_run(run)
    load_data(run)
    build_model(run)
    build_trainer(run)
    train(run)
    summary = save_and_summarize(run) if run.is_main else {}
    barrier()
    run_lock.release(run.run_dir)
    return summary


def check_config(run: Run) -> None:
    """Every check that needs no weights: the config's values, the model's existence, then target_modules and
    budgets against the model's module names (a weightless copy); the Trainer's arguments."""
    from spiel.io.base_model import build_meta_model
    from spiel.training.config.args import training_arguments

    run.settings = validate(run.cfg, world_size=env_world_size())  # raises ConfigError before anything loads
    check_model_exists(run.settings)
    run.method = get_method(run.settings.method.name)
    if run.c.parallel == "fsdp":
        from spiel.training.launch.parallel import check_fsdp_support

        check_fsdp_support()
    model = run.c.model
    try:
        meta_model = build_meta_model(model["name_or_path"], model.get("revision"))
    except OSError as e:  # a hub id that cannot be fetched (no network, no such repo, gated)
        raise ConfigError(
            f"model.name_or_path: could not load the config of {model['name_or_path']!r}: {e}. {HOW}"
        ) from None
    run.method.check_on_meta(meta_model, run.settings.method)
    if model.get("preset") == "hf" and int(os.environ.get("RANK", "0")) == 0:  # presets from the model's size
        from spiel.training.config.presets import preset_line, presets

        line = preset_line(
            run.cfg, presets(str(model["name_or_path"]), run.settings.method.name, model.get("revision"))
        )
        log.info(line)
        print(line, flush=True)
    run.args = training_arguments(
        run.settings, run.run_dir, run.method.trainer_optim(run.settings.method), run.use_wandb, run.run_name
    )


def prepare_run(run: Run) -> None:
    """Rank 0 prepares the run directory (fresh / resume / overwrite) and writes config.yaml; every rank
    learns where it resumes from."""
    c, resume_from = run.c, None
    if run.is_main:
        run_lock.acquire(
            run.run_dir
        )  # one writer per run dir (held already when spiel-train's preflight took it)
        resume_from = prepare_run_dir(run.run_dir, c.resume, c.overwrite)
        if resume_from is not None:  # before config.yaml is rewritten: a refusal leaves the run as it was
            check_resume_config(resume_from, run.cfg, c.resume_allow_config_changes)
        (run.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(run.cfg, resolve=True))
    run.resume_from = broadcast_object(None if resume_from is None else str(resume_from))
    if run.resume_from is not None:
        log.info("resuming from %s", run.resume_from)
        if run.is_main:
            truncate_metrics(
                run.run_dir / METRICS_FILE, checkpoints.checkpoint_step(Path(run.resume_from)) or 0
            )
    if run.is_main and run.use_wandb:
        wandb_logger.start(c.logger, run.run_dir, run.run_name, OmegaConf.to_container(run.cfg, resolve=True))


def load_data(run: Run) -> None:
    """The tokenizer, then the training data (and the held-out split), tokenized on the main process first."""
    import transformers

    from spiel.data import build_train_dataset
    from spiel.io.base_model import load_tokenizer

    c = run.c
    transformers.set_seed(c.seed)
    run.tokenizer = load_tokenizer(c.model["name_or_path"], revision=c.model.get("revision"))
    with run.args.main_process_first(desc="tokenizing the training data"):
        dataset, stats = build_train_dataset(
            c.data,
            run.tokenizer,
            max_seq_len=c.max_seq_len,
            cache_dir=c.data_cache_dir,
            num_proc=c.data_num_proc,
        )
        dataset, eval_dataset = eval_split(dataset, c, run.tokenizer, c.data, build_train_dataset)
    log.info("training data: %d examples", len(dataset))
    if run.is_main:  # resume: the data must be the content the run started on
        record_training_data(
            run.run_dir,
            stats,
            None if run.resume_from is None else Path(run.resume_from),
            c.resume_allow_config_changes,
        )
    run.data = (dataset, eval_dataset, stats)


def build_model(run: Run) -> None:
    """The base model (possibly NF4), wrapped by the method."""
    from spiel.io.base_model import load_base_model
    from spiel.model.targets import model_numel

    c, settings = run.c, run.settings
    base = load_base_model(
        c.model["name_or_path"],
        dtype=settings.dtype,
        quant=settings.quant,
        device=run.args.device,
        revision=c.model.get("revision"),
    )
    run.total_params = model_numel(base)
    run.model = run.method.wrap(base, settings.method, seed=c.seed, quantized=settings.quant == "nf4")
    if c.activation_checkpointing:
        enable_activation_checkpointing(run.model)


def build_trainer(run: Run) -> None:
    """The method's optimizer, the callbacks and the SpielTrainer (FSDP attached where asked)."""
    from spiel.data import DataCollatorForSpiel
    from spiel.training.engine.trainer import SpielTrainer

    c, m, model = run.c, run.settings.method, run.model
    optimizer = run.method.make_optimizer(model, m, m.lr, m.weight_decay)
    run.loss_window = LossWindowState(run.resume_from)
    dataset, eval_dataset, _ = run.data
    metrics = run.run_dir / METRICS_FILE
    run.trainer = SpielTrainer(
        model=model,
        args=run.args,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        data_collator=DataCollatorForSpiel(run.tokenizer),
        processing_class=run.tokenizer,
        optimizers=(optimizer, None),
        callbacks=[
            DivergenceGuard(model, m.lr),
            run.loss_window,
            MetricsLogCallback(metrics),
            LossPlotCallback(metrics, run.run_dir / LOSS_PNG),
        ],
        state_savers=[run.loss_window],
        save_total_limit=c.save_total_limit,
    )
    run.loss_window.trainer = run.trainer
    if c.parallel == "fsdp":
        from spiel.training.launch.parallel import attach, shard_frozen_base

        shard_frozen_base(model)
        attach(run.trainer, model)
    if c.loss_reduction == "micro_batch":
        run.trainer.model_accepts_loss_kwargs = False  # mean per micro-batch, averaged (open-instruct)


def train(run: Run) -> None:
    """Train (or only load a checkpoint of the last step), evaluate at the end, check that the trained model
    gives finite logits on one training batch and that every rank ended with the same trained weights."""
    trainer, resume_from = run.trainer, run.resume_from
    train_start = time.time()
    if resume_from is not None and _finished(Path(resume_from)):
        log.info("%s is the last step of this run: nothing left to train", resume_from)
        trainer._load_from_checkpoint(resume_from)
        trainer.state.global_step = trainer.state.max_steps = _trainer_state(Path(resume_from))["global_step"]
        train_loss = None
    else:
        train_loss = trainer.train(resume_from_checkpoint=resume_from).training_loss
        train_loss = run.loss_window.train_loss if run.loss_window.train_loss is not None else train_loss
    train_seconds = time.time() - train_start
    eval_steps = run.c.eval_steps
    if run.data[1] is not None and not (eval_steps and trainer.state.global_step % eval_steps == 0):
        trainer.evaluate()  # the end of the run, unless eval_steps just did
    start_step = checkpoints.checkpoint_step(Path(resume_from)) or 0 if resume_from else 0
    dataset = run.data[0]
    first = [dataset[i] for i in range(min(len(dataset), run.c.micro_batch_size))]
    # finite weights can still give inf logits: one training batch before final/ is written
    check_final_logits(
        run.model, trainer._prepare_inputs(trainer.data_collator(first)), run.settings.method.lr
    )
    digests = gather_objects(trainable_digest(run.model))
    if len(set(digests)) != 1:
        raise RuntimeError(f"data-parallel ranks ended with different trained weights: {digests}")
    run.trained = dict(
        train_loss=train_loss,
        train_seconds=train_seconds,
        digests=digests,
        steps_this_run=trainer.state.global_step - start_step,
    )


def save_and_summarize(run: Run) -> dict:
    """Rank 0: final/, the method's extras, summary.json, the logger's summary, and the closing lines."""
    c, method, model, run_dir = run.c, run.method, run.model, run.run_dir
    from spiel.data import parse_data_config

    final_dir = _save_final(method, model, run.tokenizer, run_dir, parse_data_config(c.data).template)
    extras = method.after_training(model, run_dir, run.trainer.state.max_steps, plot=c.plot_ages)
    extras.update(
        eval_summary(run_dir / METRICS_FILE),
        loss_png=str(plot_losses(run_dir / METRICS_FILE, run_dir / LOSS_PNG)),
    )
    summary = {**_summary(run, final_dir), **extras}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    if run.use_wandb:
        wandb_logger.record_summary(summary)
    elif c.logger.name == "tensorboard":
        tensorboard_logger.record_summary(run.trainer, summary, OmegaConf.to_container(run.cfg, resolve=True))
    line = summary_line(summary)
    log.info(line)
    print(line, flush=True)
    print(f"checkpoint: {final_dir} ({method.final_format})", flush=True)
    print(f"evaluate:   {summary['eval_command']}", flush=True)
    return summary


def _summary(run: Run, final_dir: Path) -> dict:
    settings, state, trained, (dataset, _, stats) = run.settings, run.trainer.state, run.trained, run.data
    memory, memory_what = peak_memory()
    return {
        "method": run.method.name,
        "quant": settings.quant,
        "run_dir": str(run.run_dir),
        "final_checkpoint": str(final_dir),
        "final_format": run.method.final_format,
        "steps": state.global_step,
        "max_steps": state.max_steps,
        "steps_this_run": trained["steps_this_run"],
        "resumed_from": run.resume_from,
        "final_loss": last_logged_loss(run.run_dir / METRICS_FILE),
        "train_loss": trained["train_loss"],
        "trainable": run.method.num_trainable(run.model),
        "total_params": run.total_params,
        "peak_memory_gib": memory,
        "peak_memory_what": memory_what,
        "seconds_per_step": trained["train_seconds"] / max(1, trained["steps_this_run"]),
        "wall_seconds": time.time() - run.start,
        "world_size": settings.world_size,
        "grad_accum": settings.grad_accum,
        "effective_batch": run.c.batch_size,
        "examples": len(dataset),
        "dropped_examples": stats.get("dropped"),
        "rank_digests": trained["digests"],
        "eval_command": eval_command(final_dir, settings),
    }
