"""A SparseAdamW vector whose ages are linked to ``grown_at`` (the optimizer and selection tests share it)."""

import torch

from spiel.optim import SparseAdamW


def linked_after_one_step(head_start: int):
    """Three values whose ages derive from grown_at (nothing grown yet), after one Adam step."""
    p = torch.zeros(3, requires_grad=True)
    grown_at = torch.zeros(3, dtype=torch.int32)
    opt = SparseAdamW([p], lr=1e-3)
    opt.link_ages(p, grown_at, head_start=head_start)
    p.grad = torch.ones(3)
    opt.step()
    return p, grown_at, opt
