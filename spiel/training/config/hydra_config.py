"""The Hydra side of spiel-train's config: registers the schemas of ``spiel.training.config.schema`` in Hydra's
ConfigStore (on import), and :func:`validate` checks a composed config's values (ranges, method constraints,
batch arithmetic) before anything heavy is imported or any model is loaded. Every message names the
offending key, e.g. ``method.estimation_steps``, and the ConfigError carries it as ``.key``.

    from spiel.training.config.hydra_config import validate
    settings = validate(cfg)   # raises ConfigError naming the key
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from spiel.training.config.schema import (
    MOVED_KEYS,
    RESUME_HELP,
    SPIEL_METHODS,
    ConfigError,
    FullMethodConfig,
    IA3MethodConfig,
    LoggerConfig,
    LoraMethodConfig,
    MethodConfig,
    SpielMethodConfig,
    TrainConfig,
    key_error,
)
from spiel.training.methods import METHOD_REGISTRY, get_method


@dataclass(frozen=True)
class Settings:
    """What validate() found: the config as plain objects plus derived numbers."""

    cfg: TrainConfig
    method: MethodConfig
    quant: str
    dtype: str
    world_size: int
    grad_accum: int


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="spiel_train_schema", node=TrainConfig)
    cs.store(group="schema/method", name="spiel", node=SpielMethodConfig)
    cs.store(group="schema/method", name="lora", node=LoraMethodConfig)
    cs.store(group="schema/method", name="ia3", node=IA3MethodConfig)
    cs.store(group="schema/method", name="full", node=FullMethodConfig)
    cs.store(group="schema/logger", name="logger", node=LoggerConfig)
    if not OmegaConf.has_resolver("spiel_dirname"):
        OmegaConf.register_new_resolver("spiel_dirname", dirname_from_overrides)
    if not OmegaConf.has_resolver("spiel_preset"):  # model=hf: presets from the model's size
        from spiel.training.config.presets import preset_value

        OmegaConf.register_new_resolver("spiel_preset", preset_value)


def dirname_from_overrides(override_dirname: str, run_name: Any = None) -> str:
    """A directory name for a run: ``run_name`` if set, else its overrides as Hydra joins them
    (``method-lora+lr-3e-05``; "default" for none). Characters that a shell or Hydra's override grammar
    would trip on (``/ = , [ ] { } ( ) ' "`` spaces, ...) become ``_``, so the path can be passed back as
    an override value (``resume=...``, ``spiel-eval ckpt=...``) without quoting."""
    name = str(run_name) if run_name not in (None, "", "null", "None") else override_dirname
    name = re.sub(r"[^A-Za-z0-9._+\-@]", "_", name or "default").strip(".") or "default"
    return name[:200]


def _plain(node) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


MODEL_KEYS = ("name_or_path", "dtype", "revision", "preset")
TINY_ALIAS = "tiny"
OWN_MODEL = "model=hf model.name_or_path=<dir or hub id>"
QUANT_KEYS = ("name",)


def flatten_keys(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"method.betas.0": 0.9, ...}``: every leaf of a plain container by its dotted key."""
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, (list, tuple)):
        items = enumerate(node)
    else:
        return {prefix: node}
    flat = {}
    for key, value in items:
        flat.update(flatten_keys(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def with_moved_keys(plain: dict) -> dict:
    """A plain config (a run dir's config.yaml) in today's keys: an older run's top-level ``lr`` and
    ``weight_decay`` were the rates it trained with, so they become ``method.lr`` / ``method.weight_decay``;
    the empty top-level slots (MOVED_KEYS) are dropped."""
    plain = dict(plain)
    method = dict(plain.get("method") or {})
    for old, new in MOVED_KEYS.items():
        value = plain.pop(old, None)
        if value is not None:
            method[new.removeprefix("method.")] = value
    if method:
        plain["method"] = method
    return plain


def _reject_non_finite(cfg: DictConfig) -> None:
    """lr=inf or weight_decay=nan would pass every range check below (and train to NaN)."""
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # a missing or unresolvable value: OmegaConf.to_object reports it with its key
        return
    for key, value in flatten_keys(plain).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise key_error(key, f"must be a finite number, got {value}")


def _reject_unknown_keys(cfg: DictConfig, method: MethodConfig) -> None:
    """Keys added with ``+`` (``+lerning_rate=0.1``) get past Hydra's schema check: refuse them too."""
    known = {
        "": {f.name for f in fields(TrainConfig)},
        "method": {f.name for f in fields(type(method))},
        "logger": {f.name for f in fields(LoggerConfig)},
        "model": set(MODEL_KEYS),
        "quant": set(QUANT_KEYS),
    }
    for section, allowed in known.items():
        node = cfg if not section else cfg.get(section)
        if not isinstance(node, DictConfig):
            continue
        for key in node.keys():
            if key in allowed:
                continue
            name = f"{section}.{key}" if section else str(key)
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.6)
            hint = f"; did you mean {(section + '.') if section else ''}{close[0]}?" if close else ""
            raise key_error(
                name,
                f"not a known key{hint} (keys added with '+' are checked too; known "
                f"keys{' of ' + section if section else ''}: {', '.join(sorted(allowed))})",
            )


def check_model_exists(settings: Settings) -> None:
    """The base model can be found (a local directory, an alias, or a hub id that is cached or
    downloadable): a check of this machine, not of the config, so it is not part of validate()."""
    from spiel.io.model_source import check_model_source

    model = settings.cfg.model
    try:
        check_model_source(model.get("name_or_path"), revision=model.get("revision"))
    except ValueError as e:
        raise ConfigError(str(e), key="model.name_or_path") from None
    from spiel.io.model_source import RemoteCodeError, refuse_remote_code

    try:
        refuse_remote_code(model.get("name_or_path"), revision=model.get("revision"))
    except RemoteCodeError as e:
        raise ConfigError(f"model.name_or_path: {e}", key="model.name_or_path") from None


def validate(cfg: DictConfig, world_size: int = 1) -> Settings:
    """Check the composed config; ConfigError names the first bad key. Nothing heavy is imported (but for
    model=hf, whose presets read the model's config)."""
    _check_model_preset(cfg)
    _reject_non_finite(cfg)
    try:
        obj: TrainConfig = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except Exception as e:  # omegaconf's own errors (types, missing values) carry the full key
        raise ConfigError(str(e), key=getattr(e, "full_key", None)) from None
    method = obj.method
    if not isinstance(method, MethodConfig):
        name = method.get("name") if isinstance(method, dict) else None
        raise key_error(
            "method", f"the method config must extend a schema (/schema/method/...), got {name!r}"
        )
    _reject_unknown_keys(cfg, method)
    dtype, quant = _check_model_and_quant(obj, method)
    for old, new in MOVED_KEYS.items():  # one key each: method.lr, method.weight_decay
        value = getattr(obj, old)
        _need(
            value is None,
            old,
            f"moved to {new} (one key; each method file sets the paper's value as its "
            f"default): write {new}={value} instead of {old}={value}",
        )
    per_step = _check_batches_and_schedule(obj, world_size)
    _check_parallel(obj, method, quant, world_size)
    _check_saving_and_validation(obj)
    _check_device_and_resume(obj)
    try:
        from spiel.data import DataError, parse_data_config

        parse_data_config(obj.data)
    except DataError as e:
        raise key_error("data", str(e)) from None
    return Settings(
        cfg=obj,
        method=method,
        quant=quant,
        dtype=dtype,
        world_size=world_size,
        grad_accum=obj.batch_size // per_step,
    )


def _need(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise key_error(key, message)


def _check_model_and_quant(obj: TrainConfig, method: MethodConfig) -> tuple[str, str]:
    """(the base's dtype, none | nf4): an NF4 base computes in bf16, so the rest of the model does too."""
    model = obj.model if isinstance(obj.model, dict) else _plain(obj.model)
    quant_cfg = obj.quant if isinstance(obj.quant, dict) else _plain(obj.quant)
    _need(
        bool(model.get("name_or_path")),
        "model.name_or_path",
        f"no base model: choose model=tiny|smollm2-135m|llama2-7b|llama2-13b, or your own with {OWN_MODEL}",
    )
    dtype = str(model.get("dtype") or "auto")
    _need(
        dtype in ("auto", "float32", "bfloat16", "float16"),
        "model.dtype",
        f"must be auto, float32, bfloat16 or float16, got {dtype!r}",
    )
    quant = str((quant_cfg or {}).get("name") or "none")
    _need(quant in ("none", "nf4"), "quant.name", f"must be none or nf4, got {quant!r}")
    _need(
        quant != "nf4" or get_method(method.name).supports_quant,
        "quant",
        "quant=nf4 needs a method that trains on top of frozen 4-bit weights "
        f"({', '.join(n for n, m in METHOD_REGISTRY.items() if m.supports_quant)}), not {method.name}",
    )
    if quant == "nf4":
        dtype = "bfloat16"  # the 4-bit layers compute in bf16: the rest of the model must match
        _require("bitsandbytes", "quant=nf4", "quant")
    return dtype, quant


def _check_batches_and_schedule(obj: TrainConfig, world_size: int) -> int:
    """The examples one micro-step takes over all devices (the batch must be a whole number of them)."""
    _need(obj.epochs > 0 or obj.max_steps > 0, "epochs", f"must be > 0 (or set max_steps), got {obj.epochs}")
    _need(obj.batch_size >= 1, "batch_size", f"must be >= 1, got {obj.batch_size}")
    _need(obj.micro_batch_size >= 1, "micro_batch_size", f"must be >= 1, got {obj.micro_batch_size}")
    per_step = obj.micro_batch_size * world_size
    _need(
        obj.batch_size % per_step == 0,
        "batch_size",
        f"{obj.batch_size} is not a multiple of micro_batch_size × devices = {obj.micro_batch_size} × "
        f"{world_size}; gradient accumulation needs a whole number of micro-batches",
    )
    _need(
        obj.max_seq_len is None or obj.max_seq_len >= 2, "max_seq_len", f"must be >= 2, got {obj.max_seq_len}"
    )
    _need(0 <= obj.warmup_ratio < 1, "warmup_ratio", f"must be in [0, 1), got {obj.warmup_ratio}")
    _need(
        obj.lr_scheduler in ("linear", "cosine", "constant", "constant_with_warmup"),
        "lr_scheduler",
        f"must be linear, cosine, constant or constant_with_warmup, got {obj.lr_scheduler!r}",
    )
    _need(obj.max_grad_norm >= 0, "max_grad_norm", f"must be >= 0, got {obj.max_grad_norm}")
    _need(
        obj.loss_reduction in ("tokens", "micro_batch"),
        "loss_reduction",
        f"must be tokens or micro_batch, got {obj.loss_reduction!r}",
    )
    return per_step


def _check_saving_and_validation(obj: TrainConfig) -> None:
    _need(obj.save_steps >= 0, "save_steps", f"must be >= 0, got {obj.save_steps}")
    _need(obj.save_total_limit >= 1, "save_total_limit", f"must be >= 1, got {obj.save_total_limit}")
    _need(obj.logging_steps >= 1, "logging_steps", f"must be >= 1, got {obj.logging_steps}")
    _need(0 <= obj.eval_fraction < 1, "eval_fraction", f"must be in [0, 1), got {obj.eval_fraction}")
    _need(
        not (obj.eval_fraction > 0 and obj.eval_data),
        "eval_data",
        "set eval_fraction (a part of the training data) or eval_data (a file), not both",
    )
    _need(not obj.eval_data or Path(obj.eval_data).is_file(), "eval_data", f"{obj.eval_data} is not a file")
    _need(obj.eval_steps >= 0, "eval_steps", f"must be >= 0, got {obj.eval_steps}")
    _need(
        obj.eval_steps == 0 or obj.eval_fraction > 0 or bool(obj.eval_data),
        "eval_steps",
        "evaluating needs a held-out set: set eval_fraction=0.05 (say) or eval_data=<file>",
    )


def _check_device_and_resume(obj: TrainConfig) -> None:
    _need(
        obj.device in ("auto", "cpu", "cuda"),
        "device",
        f"must be auto, cpu or cuda (CUDA_VISIBLE_DEVICES picks GPUs), got {obj.device!r}",
    )
    if obj.device == "cuda":
        import torch

        _need(torch.cuda.is_available(), "device", "cuda was asked for but no CUDA device is available")
    _need(obj.resume in ("never", "auto") or bool(obj.resume), "resume", RESUME_HELP)
    if obj.resume not in ("never", "auto"):
        _need(Path(obj.resume).is_dir(), "resume", f"{obj.resume} is not a directory ({RESUME_HELP})")


def _require(module: str, what: str, key: str) -> None:
    from spiel.extras import MissingExtra, require

    try:
        require(module, what)
    except MissingExtra as e:
        raise ConfigError(str(e), key=key) from None


def _check_model_preset(cfg: DictConfig) -> None:
    """model=tiny's presets (lr, rank 4, float32, batch 16) are for the 3M-parameter demo model: pointing
    model.name_or_path elsewhere would train another model with them, silently. model=hf needs a model."""
    model = cfg.get("model")
    if not isinstance(model, DictConfig):
        return
    preset, name = model.get("preset"), model.get("name_or_path")
    if preset == "tiny" and name not in (None, TINY_ALIAS):
        from spiel.io.model_source import MODEL_ALIASES

        if Path(str(name)).resolve() != MODEL_ALIASES[TINY_ALIAS].resolve():
            raise key_error(
                "model.name_or_path",
                f"{name} with model=tiny would train it with the tiny demo "
                "model's presets (method.lr, rank_equiv 4, float32, batch 16); train your own model "
                f"with model=hf model.name_or_path={name} (presets derived from its size, printed "
                "at start)",
            )
    if preset == "hf":  # its presets read the model's config: the model must be there first
        if not name:
            raise key_error("model.name_or_path", f"model=hf trains your own model: {OWN_MODEL}")
        from spiel.io.model_source import RemoteCodeError, check_model_source, refuse_remote_code

        try:
            check_model_source(name, revision=model.get("revision"))
            refuse_remote_code(name, revision=model.get("revision"))
        except RemoteCodeError as e:
            raise ConfigError(f"model.name_or_path: {e}", key="model.name_or_path") from None
        except ValueError as e:
            raise ConfigError(str(e), key="model.name_or_path") from None


def _check_parallel(obj: TrainConfig, method, quant: str, world_size: int) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise key_error("parallel", message)

    need(obj.parallel in ("none", "ddp", "fsdp"), f"must be none, ddp or fsdp, got {obj.parallel!r}")
    need(
        obj.parallel != "none" or world_size == 1,
        f"none runs one process, but the launcher started {world_size} (use ddp or fsdp)",
    )
    if obj.parallel == "fsdp":
        need(
            world_size > 1,
            "fsdp shards over several processes: launch with torchrun --nproc_per_node N "
            "(or accelerate launch); one process is parallel=ddp",
        )
        need(
            get_method(method.name).is_sparse,
            f"fsdp is wired for the SpIEL methods ({', '.join(SPIEL_METHODS)}), "
            f"not {method.name!r}; use parallel=ddp",
        )
        need(quant == "none", "fsdp shards a bf16/fp32 base; with quant=nf4 use parallel=ddp")
        need(
            obj.max_grad_norm == 0, "fsdp does not clip gradients (set max_grad_norm=0, the paper's setting)"
        )


register_configs()
