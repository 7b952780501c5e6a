"""spiel-train's structured config: dataclass schemas registered in Hydra's ConfigStore.

The YAML tree lives in ``configs/`` (``train.yaml`` and the groups ``model/ data/ method/ quant/ logger/
experiment/ model_train/ hydra/launcher/``). The schemas here type every training key, so Hydra rejects
a wrong type or an unknown key while composing, and :func:`validate` checks values (ranges, method
constraints, batch arithmetic) before anything heavy is imported or any model is loaded. Every message
names the offending key, e.g. ``method.estimation_steps``.

    from spiel.config import validate
    settings = validate(cfg)   # raises ConfigError naming the key
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # a link to the repository's configs/ (see there)
SPIEL_METHODS = ("ag", "ma")
PEFT_METHODS = ("lora", "ia3")
METHOD_NAMES = SPIEL_METHODS + PEFT_METHODS + ("full",)
LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RESUME_HELP = "resume must be never, auto, or the path of a checkpoint-N directory"


class ConfigError(ValueError):
    """An invalid training config; the message names the key."""


# -- method schemas (one per family; the YAML in configs/method/ extends one of them) --------------------
@dataclass
class MethodConfig:
    name: str = MISSING
    lr: float = MISSING  # the method's default learning rate (the top-level `lr` defaults to it)
    weight_decay: float = 0.0

    def _check(self, ok: bool, key: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"method.{key}: {message}")


@dataclass
class SpielMethodConfig(MethodConfig):
    """SpIEL-AG / SpIEL-MA. Budget: one of rank_equiv | density | num_tunable (none: rank_equiv 64)."""

    rank_equiv: Optional[int] = None
    density: Optional[float] = None
    num_tunable: Optional[int] = None
    target_modules: Any = None  # null (every linear layer but the head) | [suffixes] | "regex"
    reselection_steps: int = 20  # R
    estimation_steps: int = 5  # γ (SpIEL-AG's gradient-estimation phase)
    schedule: str = "linear"
    initial_rate: float = 0.2  # ξ
    drop: str = "magnitude"
    growth: str = "paper"  # paper | normalized | capped | explore | random | static (the last five: ag only)
    growth_cap: float = 4.0  # capped: most entries per row/column, as a multiple of the mean
    explore_share: float = 0.25  # explore: share of each growth drawn at random
    delta_dtype: Optional[str] = None  # null: float32, bfloat16 on an NF4 base (the paper)
    grad_path: str = "auto"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # SpIEL-AG's Adam
    eps: float = 1e-8

    def __post_init__(self):
        self._check(self.name in SPIEL_METHODS, "name", f"must be one of {SPIEL_METHODS} for a SpIEL method, "
                    f"got {self.name!r}")
        self._check(self.lr is MISSING or self.lr >= 0, "lr", f"must be >= 0, got {self.lr}")
        self._check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        self._check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas",
                    f"must be two numbers in [0, 1), got {list(self.betas)}")
        self.spiel_config()  # SpielConfig validates the rest and names the field

    def spiel_config(self, seed: int = 0, quantized: bool = False):
        from spiel.spiel_config import SpielConfig

        delta_dtype = self.delta_dtype or ("bfloat16" if quantized else "float32")
        target = self.target_modules
        if target is not None and not isinstance(target, str):
            target = list(target)
        try:
            return SpielConfig(method=self.name, rank_equiv=self.rank_equiv, density=self.density,
                               num_tunable=self.num_tunable, target_modules=target,
                               reselection_steps=self.reselection_steps, estimation_steps=self.estimation_steps,
                               schedule=self.schedule, initial_rate=self.initial_rate, drop=self.drop,
                               growth=self.growth, growth_cap=self.growth_cap, explore_share=self.explore_share,
                               delta_dtype=delta_dtype, grad_path=self.grad_path, seed=seed)
        except ValueError as e:  # "SpielConfig: density must be ..." -> "method.density: must be ..."
            message = str(e).removeprefix("SpielConfig: ")
            key, _, rest = message.partition(" ")
            if key.isidentifier() and hasattr(self, key):
                raise ConfigError(f"method.{key}: {rest}") from None
            raise ConfigError(f"method: {message}") from None


@dataclass
class LoraMethodConfig(MethodConfig):
    """peft LoRA (QLoRA with quant=nf4): r, alpha 16, dropout 0.1 on the seven projections."""

    r: int = 64
    alpha: float = 16.0
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_PROJECTIONS))
    adapter_dtype: Optional[str] = None  # null: float32, bfloat16 on an NF4 base (the paper)

    def __post_init__(self):
        self._check(self.name == "lora", "name", f"must be 'lora' for a LoRA config, got {self.name!r}")
        self._check(self.r >= 1, "r", f"must be >= 1, got {self.r}")
        self._check(self.alpha > 0, "alpha", f"must be > 0, got {self.alpha}")
        self._check(0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")
        self._check(len(self.target_modules) > 0, "target_modules", "must name at least one module")
        self._check(self.adapter_dtype in (None, "float32", "bfloat16", "float16"), "adapter_dtype",
                    f"must be null, float32, bfloat16 or float16, got {self.adapter_dtype!r}")
        self._check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")


@dataclass
class IA3MethodConfig(MethodConfig):
    """peft (IA)3 on the seven projections; the MLP ones scale their input (feedforward_modules)."""

    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_PROJECTIONS))
    feedforward_modules: list[str] = field(default_factory=lambda: ["gate_proj", "up_proj", "down_proj"])

    def __post_init__(self):
        self._check(self.name == "ia3", "name", f"must be 'ia3' for an (IA)3 config, got {self.name!r}")
        missing = sorted(set(self.feedforward_modules) - set(self.target_modules))
        self._check(not missing, "feedforward_modules", f"{missing} are not in method.target_modules")
        self._check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")


@dataclass
class FullMethodConfig(MethodConfig):
    """Full fine-tuning; `optim` is any transformers optimizer name (e.g. paged_adamw_32bit)."""

    optim: str = "adamw_torch"

    def __post_init__(self):
        self._check(self.name == "full", "name", f"must be 'full', got {self.name!r}")
        self._check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")


# -- logger -----------------------------------------------------------------------------------------------
def _tensorboard_available() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorboardX"))


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb | tensorboard (a local metrics.jsonl is always written)
    project: str = "spiel"
    entity: Optional[str] = None
    mode: str = "auto"  # auto: online with an API key, else offline | online | offline | disabled
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.name not in ("none", "wandb", "tensorboard"):
            raise ConfigError(f"logger.name: must be none, wandb or tensorboard, got {self.name!r}")
        if self.name == "tensorboard" and not _tensorboard_available():
            raise ConfigError("logger=tensorboard needs the tensorboard package: pip install tensorboard")
        if self.mode not in ("auto", "online", "offline", "disabled"):
            raise ConfigError(f"logger.mode: must be auto, online, offline or disabled, got {self.mode!r}")


# -- the whole training config ------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    model: Any = MISSING  # configs/model/*.yaml: name_or_path, dtype, revision
    data: Any = MISSING  # configs/data/*.yaml (spiel.data.parse_data_config checks it)
    method: Any = MISSING  # one of the method schemas above
    quant: Any = MISSING  # configs/quant/*.yaml: name (none | nf4)
    logger: LoggerConfig = field(default_factory=LoggerConfig)

    seed: int = 42
    lr: float = MISSING
    weight_decay: float = MISSING
    epochs: float = 2.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 128  # effective (all devices, after gradient accumulation)
    micro_batch_size: int = 1  # per device and forward pass
    max_seq_len: Optional[int] = None
    warmup_ratio: float = 0.03
    lr_scheduler: str = "linear"
    max_grad_norm: float = 0.0  # 0 = no clipping (the paper)
    loss_reduction: str = "tokens"  # tokens: mean over all label tokens of the batch | micro_batch (open-instruct)
    activation_checkpointing: bool = False
    device: str = "auto"
    parallel: str = "ddp"  # ddp (one process or torchrun/accelerate ranks) | fsdp (shard the frozen base) | none

    output_root: str = "outputs/train"
    run_name: Optional[str] = None  # default: from the command-line overrides
    resume: str = "never"  # never | auto | <path to checkpoint-N>
    resume_allow_config_changes: bool = False  # resume although keys that change training differ
    overwrite: bool = False  # start over in a run dir that holds an earlier run
    save_steps: int = 200  # 0: no intermediate checkpoints
    save_total_limit: int = 2
    logging_steps: int = 10
    progress_bar: bool = True
    num_workers: int = 0
    data_cache_dir: Optional[str] = None
    data_num_proc: int = 1
    eval_fraction: float = 0.0  # hold out this fraction of the training examples for validation
    eval_data: Optional[str] = None  # or validate on this file (any data source format)
    eval_steps: int = 0  # evaluate every N steps (0: only at the end, when there is a held-out set)
    plot_ages: bool = True


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
    if not OmegaConf.has_resolver("spiel_mul"):
        OmegaConf.register_new_resolver("spiel_mul", multiply)


def multiply(a, b) -> float:
    """``${spiel_mul:${method.lr},10}``: a scaled default (rounded to 12 significant digits)."""
    return float(f"{float(a) * float(b):.12g}")


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


MODEL_KEYS = ("name_or_path", "dtype", "revision")
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


def _reject_non_finite(cfg: DictConfig) -> None:
    """lr=inf or weight_decay=nan would pass every range check below (and train to NaN)."""
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # a missing or unresolvable value: OmegaConf.to_object reports it with its key
        return
    for key, value in flatten_keys(plain).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number, got {value}")


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
            raise ConfigError(f"{name}: not a known key{hint} (keys added with '+' are checked too; known "
                              f"keys{' of ' + section if section else ''}: {', '.join(sorted(allowed))})")


def check_model_exists(settings: Settings) -> None:
    """The base model can be found (a local directory, an alias, or a hub id that is cached or
    downloadable): a check of this machine, not of the config, so it is not part of validate()."""
    from spiel.model_source import check_model_source

    model = settings.cfg.model
    try:
        check_model_source(model.get("name_or_path"), revision=model.get("revision"))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def validate(cfg: DictConfig, world_size: int = 1) -> Settings:
    """Check the composed config; ConfigError names the first bad key. Nothing heavy is imported."""
    _reject_non_finite(cfg)
    try:
        obj: TrainConfig = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except Exception as e:  # omegaconf's own errors (types, missing values) carry the full key
        raise ConfigError(str(e)) from None
    method = obj.method
    if not isinstance(method, MethodConfig):
        name = method.get("name") if isinstance(method, dict) else None
        raise ConfigError(f"method: the method config must extend a schema (/schema/method/...), got {name!r}")
    _reject_unknown_keys(cfg, method)
    model = obj.model if isinstance(obj.model, dict) else _plain(obj.model)
    quant_cfg = obj.quant if isinstance(obj.quant, dict) else _plain(obj.quant)

    def need(ok: bool, key: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"{key}: {message}")

    need(bool(model.get("name_or_path")), "model.name_or_path",
         "no base model: choose model=tiny|llama2-7b|llama2-13b or set model.name_or_path=<dir or hub id>")
    dtype = str(model.get("dtype") or "auto")
    need(dtype in ("auto", "float32", "bfloat16", "float16"), "model.dtype",
         f"must be auto, float32, bfloat16 or float16, got {dtype!r}")
    quant = str((quant_cfg or {}).get("name") or "none")
    need(quant in ("none", "nf4"), "quant.name", f"must be none or nf4, got {quant!r}")
    need(not (quant == "nf4" and method.name == "full"), "quant",
         "quant=nf4 needs a method that trains on top of frozen 4-bit weights (ag, ma, lora, ia3), not full")
    if quant == "nf4":
        dtype = "bfloat16"  # the 4-bit layers compute in bf16: the rest of the model must match

    need(obj.lr >= 0, "lr", f"must be >= 0, got {obj.lr}")
    need(obj.weight_decay >= 0, "weight_decay", f"must be >= 0, got {obj.weight_decay}")
    need(obj.epochs > 0 or obj.max_steps > 0, "epochs", f"must be > 0 (or set max_steps), got {obj.epochs}")
    need(obj.batch_size >= 1, "batch_size", f"must be >= 1, got {obj.batch_size}")
    need(obj.micro_batch_size >= 1, "micro_batch_size", f"must be >= 1, got {obj.micro_batch_size}")
    per_step = obj.micro_batch_size * world_size
    need(obj.batch_size % per_step == 0, "batch_size",
         f"{obj.batch_size} is not a multiple of micro_batch_size × devices = {obj.micro_batch_size} × "
         f"{world_size}; gradient accumulation needs a whole number of micro-batches")
    need(obj.max_seq_len is None or obj.max_seq_len >= 2, "max_seq_len", f"must be >= 2, got {obj.max_seq_len}")
    need(0 <= obj.warmup_ratio < 1, "warmup_ratio", f"must be in [0, 1), got {obj.warmup_ratio}")
    need(obj.lr_scheduler in ("linear", "cosine", "constant", "constant_with_warmup"), "lr_scheduler",
         f"must be linear, cosine, constant or constant_with_warmup, got {obj.lr_scheduler!r}")
    need(obj.max_grad_norm >= 0, "max_grad_norm", f"must be >= 0, got {obj.max_grad_norm}")
    need(obj.loss_reduction in ("tokens", "micro_batch"), "loss_reduction",
         f"must be tokens or micro_batch, got {obj.loss_reduction!r}")
    _check_parallel(obj, method, quant, world_size)
    need(obj.save_steps >= 0, "save_steps", f"must be >= 0, got {obj.save_steps}")
    need(obj.save_total_limit >= 1, "save_total_limit", f"must be >= 1, got {obj.save_total_limit}")
    need(obj.logging_steps >= 1, "logging_steps", f"must be >= 1, got {obj.logging_steps}")
    need(0 <= obj.eval_fraction < 1, "eval_fraction", f"must be in [0, 1), got {obj.eval_fraction}")
    need(not (obj.eval_fraction > 0 and obj.eval_data), "eval_data",
         "set eval_fraction (a part of the training data) or eval_data (a file), not both")
    need(not obj.eval_data or Path(obj.eval_data).is_file(), "eval_data", f"{obj.eval_data} is not a file")
    need(obj.eval_steps >= 0, "eval_steps", f"must be >= 0, got {obj.eval_steps}")
    need(obj.eval_steps == 0 or obj.eval_fraction > 0 or bool(obj.eval_data), "eval_steps",
         "evaluating needs a held-out set: set eval_fraction=0.05 (say) or eval_data=<file>")
    need(obj.device in ("auto", "cpu", "cuda"), "device",
         f"must be auto, cpu or cuda (CUDA_VISIBLE_DEVICES picks GPUs), got {obj.device!r}")
    if obj.device == "cuda":
        import torch

        need(torch.cuda.is_available(), "device", "cuda was asked for but no CUDA device is available")
    need(obj.resume in ("never", "auto") or bool(obj.resume), "resume", RESUME_HELP)
    if obj.resume not in ("never", "auto"):
        need(Path(obj.resume).is_dir(), "resume", f"{obj.resume} is not a directory ({RESUME_HELP})")
    try:
        from spiel.data import DataError, parse_data_config

        parse_data_config(obj.data)
    except DataError as e:
        raise ConfigError(f"data: {e}") from None
    return Settings(cfg=obj, method=method, quant=quant, dtype=dtype, world_size=world_size,
                    grad_accum=obj.batch_size // per_step)


def _check_parallel(obj: TrainConfig, method, quant: str, world_size: int) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(f"parallel: {message}")

    need(obj.parallel in ("none", "ddp", "fsdp"), f"must be none, ddp or fsdp, got {obj.parallel!r}")
    need(obj.parallel != "none" or world_size == 1,
         f"none runs one process, but the launcher started {world_size} (use ddp or fsdp)")
    if obj.parallel == "fsdp":
        need(world_size > 1, "fsdp shards over several processes: launch with torchrun --nproc_per_node N "
                             "(or accelerate launch); one process is parallel=ddp")
        need(method.name in SPIEL_METHODS, f"fsdp is wired for the SpIEL methods (ag, ma), not {method.name!r}; "
                                           "use parallel=ddp")
        need(quant == "none", "fsdp shards a bf16/fp32 base; with quant=nf4 use parallel=ddp")
        need(obj.max_grad_norm == 0, "fsdp does not clip gradients (set max_grad_norm=0, the paper's setting)")


register_configs()
