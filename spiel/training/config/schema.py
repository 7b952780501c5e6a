"""spiel-train's config schema: the dataclasses that type every training key. No hydra here: Hydra
registers these in its ConfigStore in ``spiel.training.config.hydra_config`` (with ``validate``), and the
benchmarks build the method configs directly.

The YAML tree lives in ``configs/`` (``train.yaml`` and the groups ``model/ data/ method/ quant/ logger/
experiment/ model_train/ hydra/launcher/``). Hydra rejects a wrong type or an unknown key while composing;
the ``__post_init__`` checks here and ``validate`` check values. Every message names the offending key,
e.g. ``method.estimation_steps``, and ConfigError carries it as ``.key``.

The SpIEL knobs are not declared here: SpielMethodConfig inherits them from ``spiel.spiel_config.SpielKnobs``.
The learning rate and weight decay are the method's keys, ``method.lr`` and ``method.weight_decay`` (one key
each; each method file carries the paper's value as its default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from spiel.model.llama import LLAMA_MLP_PROJECTIONS, LLAMA_PROJECTIONS
from spiel.selection.config import SPIEL_METHODS
from spiel.spiel_config import SpielConfigError, SpielKnobs

MISSING = (
    "???"  # omegaconf.MISSING: a value the YAML must give (spelled out so this module needs no omegaconf)
)
PEFT_METHODS = ("lora", "ia3")
METHOD_NAMES = SPIEL_METHODS + PEFT_METHODS + ("full",)
RESUME_HELP = "resume must be never, auto, or the path of a checkpoint-N directory"
MOVED_KEYS = {"lr": "method.lr", "weight_decay": "method.weight_decay"}  # top-level keys of older configs


class ConfigError(ValueError):
    """An invalid training config; the message names the key, and ``key`` holds it (None: no single key)."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


def key_error(key: str, problem: str) -> ConfigError:
    """``ConfigError("<key>: <problem>", key=<key>)``."""
    return ConfigError(f"{key}: {problem}", key=key)


# -- method schemas (one per family; the YAML in configs/method/ extends one of them) --------------------
@dataclass
class MethodConfig:
    name: str = MISSING
    lr: float = MISSING  # the learning rate (the one key: method.lr; each method file sets the paper's)
    weight_decay: float = 0.0

    def _check(self, ok: bool, key: str, message: str) -> None:
        if not ok:
            raise key_error(f"method.{key}", message)

    def _check_rates(self) -> None:
        self._check(self.lr == MISSING or self.lr >= 0, "lr", f"must be >= 0, got {self.lr}")
        self._check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        if self.lr != MISSING:
            from spiel.optim.slot_state import decay_problem  # every method's optimizer decays decoupled

            problem = decay_problem(self.lr, self.weight_decay)
            self._check(problem is None, "weight_decay", f"with method.lr={self.lr:g}, {problem}")


@dataclass
class SpielMethodConfig(SpielKnobs, MethodConfig):  # fields: name, lr, weight_decay, the knobs, betas, eps
    """SpIEL-AG / SpIEL-MA: the SpIEL knobs (declared once, in SpielKnobs) plus the optimizer's settings."""

    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # SpIEL-AG's Adam
    eps: float = 1e-8

    def __post_init__(self):
        self._check(
            self.name in SPIEL_METHODS,
            "name",
            f"must be one of {SPIEL_METHODS} for a SpIEL method, got {self.name!r}",
        )
        self._check_rates()
        self._check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "betas",
            f"must be two numbers in [0, 1), got {list(self.betas)}",
        )
        try:
            from spiel.selection.methods import check_for_method

            self.check_knobs()
            check_for_method(self, self.name)
        except SpielConfigError as e:  # the knob's name is data: re-key it as the config key
            raise key_error(f"method.{e.field}" if e.field else "method", e.problem) from None

    def spiel_config(self, seed: int = 0, quantized: bool = False):
        """The library config of these settings; ``delta_dtype`` null is bfloat16 on an NF4 base (the paper)."""
        from spiel.spiel_config import SpielConfig

        knobs = self.knob_values()
        knobs["delta_dtype"] = self.delta_dtype or ("bfloat16" if quantized else "float32")
        return SpielConfig(method=self.name, seed=seed, **knobs)


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
        self._check(
            self.adapter_dtype in (None, "float32", "bfloat16", "float16"),
            "adapter_dtype",
            f"must be null, float32, bfloat16 or float16, got {self.adapter_dtype!r}",
        )
        self._check_rates()


@dataclass
class IA3MethodConfig(MethodConfig):
    """peft (IA)3 on the seven projections; the MLP ones scale their input (feedforward_modules)."""

    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_PROJECTIONS))
    feedforward_modules: list[str] = field(default_factory=lambda: list(LLAMA_MLP_PROJECTIONS))

    def __post_init__(self):
        self._check(self.name == "ia3", "name", f"must be 'ia3' for an (IA)3 config, got {self.name!r}")
        missing = sorted(set(self.feedforward_modules) - set(self.target_modules))
        self._check(not missing, "feedforward_modules", f"{missing} are not in method.target_modules")
        self._check_rates()


@dataclass
class FullMethodConfig(MethodConfig):
    """Full fine-tuning; `optim` is any transformers optimizer name (e.g. paged_adamw_32bit)."""

    optim: str = "adamw_torch"

    def __post_init__(self):
        self._check(self.name == "full", "name", f"must be 'full', got {self.name!r}")
        self._check_rates()


METHOD_CONFIGS = {
    **dict.fromkeys(SPIEL_METHODS, SpielMethodConfig),
    "lora": LoraMethodConfig,
    "ia3": IA3MethodConfig,
    "full": FullMethodConfig,
}  # method name -> its schema


# -- logger -----------------------------------------------------------------------------------------------
def _check_logger_package(name: str) -> None:
    from spiel.extras import MissingExtra, require

    try:
        require(name, f"logger={name}")
    except MissingExtra as e:
        raise ConfigError(str(e), key="logger") from None


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
            raise key_error("logger.name", f"must be none, wandb or tensorboard, got {self.name!r}")
        if self.name in ("wandb", "tensorboard"):
            _check_logger_package(self.name)
        if self.mode not in ("auto", "online", "offline", "disabled"):
            raise key_error("logger.mode", f"must be auto, online, offline or disabled, got {self.mode!r}")


# -- the whole training config ------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    model: Any = MISSING  # configs/model/*.yaml: name_or_path, dtype, revision
    data: Any = MISSING  # configs/data/*.yaml (spiel.data.parse_data_config checks it)
    method: Any = MISSING  # one of the method schemas above
    quant: Any = MISSING  # configs/quant/*.yaml: name (none | nf4)
    logger: LoggerConfig = field(default_factory=LoggerConfig)

    seed: int = 42
    # Removed keys, kept only so that an old config or command line (lr=3e-5) is refused with a pointer to
    # the one key (MOVED_KEYS) instead of Hydra's "not in struct": the rates are method.lr / method.weight_decay.
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    epochs: float = 2.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 128  # effective (all devices, after gradient accumulation)
    micro_batch_size: int = 1  # per device and forward pass
    max_seq_len: Optional[int] = None
    warmup_ratio: float = 0.03
    lr_scheduler: str = "linear"
    max_grad_norm: float = 0.0  # 0 = no clipping (the paper)
    loss_reduction: str = (
        "tokens"  # tokens: mean over all label tokens of the batch | micro_batch (open-instruct)
    )
    activation_checkpointing: bool = False
    device: str = "auto"
    parallel: str = (
        "ddp"  # ddp (one process or torchrun/accelerate ranks) | fsdp (shard the frozen base) | none
    )

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
