"""SpIEL's drop/grow selection: the knobs (``config``, torch-free), the update-rate schedule, drop and growth
rules, and the Selector.

Needs only torch (torch.distributed for multi-rank agreement). The names below load on first use, so that
``spiel.selection.config`` imports without torch.
"""

from importlib import import_module

_HOMES = {
    "DROP_CRITERIA": "config",
    "GROWTH_NAMES": "config",
    "SCHEDULES": "config",
    "SPIEL_METHODS": "config",
    "SelectionConfig": "config",
    "ReselectionSchedule": "schedule",
    "Selector": "selector",
    "ag_grow_order": "grow",
    "ma_grow_indices": "grow",
    "top_candidates": "grow",
    "drop_order": "drop",
    "method_spec": "methods",
    "budget_shares": "concentration",
    "model_concentration": "concentration",
    "support_concentration": "concentration",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'spiel.selection' has no attribute {name!r}")
    return getattr(import_module(f"spiel.selection.{_HOMES[name]}"), name)
