"""DROP: which active slots give up their position at a reselection."""

from __future__ import annotations

import torch

from spiel.selection.config import DROP_CRITERIA
from spiel.selection.order import order_by


def drop_order(
    values: torch.Tensor, n: int, criterion: str = "magnitude", reference: torch.Tensor | None = None
) -> torch.Tensor:
    """Slots of the ``n`` weakest entries, weakest first.

    ``magnitude`` (the released code's rule, our default): smallest ``|value|``.
    ``change`` (the paper's Algorithm 1): smallest ``|value − reference|``, the change since the last
    reselection. Ties go to the lower slot, so the choice is deterministic.
    """
    if criterion not in DROP_CRITERIA:
        raise ValueError(f"drop must be one of {DROP_CRITERIA}, got {criterion!r}")
    score = values.detach().float()
    if criterion == "change":
        if reference is None:
            raise ValueError("drop='change' needs the values at the last reselection")
        score = score - reference.float()
    order = order_by(score.abs())
    return order[:n]
