"""spiel: SpIEL sparse fine-tuning for instruction-tuning LLaMA-class models.

The heavy parts are imported lazily, so `spiel.delta`, `spiel.optim` and `spiel.selection` work on a
machine that has only torch (and triton), without hydra, datasets, bitsandbytes or wandb.
"""

from __future__ import annotations

import importlib

from spiel.quiet_imports import quiet_offline_kernel_fetch

__version__ = "0.1.0"
quiet_offline_kernel_fetch()  # bitsandbytes' offline Hub-kernel warnings (see spiel.quiet_imports)

_LAZY = {
    "SpielConfig": "spiel.model.spiel_model",
    "SpielModel": "spiel.model.spiel_model",
    "get_spiel_model": "spiel.model.spiel_model",
    "compose": "spiel.model.spiel_model",
    "SpielTrainerMixin": "spiel.integrations.hf_trainer",
    "spiel_trainer": "spiel.integrations.hf_trainer",
    "AutoSpielModelForCausalLM": "spiel.model.auto",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'spiel' has no attribute {name!r}")


__all__ = sorted(_LAZY) + ["__version__"]
