"""SparseSM3: SM3 for sparse-delta values, with row and column accumulators over the dense shape.

For a values vector living at positions ``(r_j, c_j)`` of an ``[out, in]`` weight, SM3 keeps a row
accumulator ``row [out]`` and a column accumulator ``col [in]`` (fp32). Per step:

    u_j   = min(row[r_j], col[c_j]) + g_j²
    row   = scatter-max(row, r, u);  col = scatter-max(col, c, u)
    p_j  ← p_j − lr·λ·p_j − lr · g_j / sqrt(u_j + eps)

The accumulators are indexed by position, not by slot, so they survive drop/regrow, and their outer
product is what SpIEL-MA ranks for growth. Optional momentum keeps a per-slot buffer that is reset
for regrown slots.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from spiel.delta.indices import rows_cols
from spiel.optim.slot_state import SlotStateOptimizer, decay_problem


class SparseSM3(SlotStateOptimizer):
    """``layouts`` maps each values parameter to an object with ``.indices`` (flat positions) and
    ``.dense_shape`` (``(out, in)``), e.g. its ``SparseDeltaLinear``."""

    SLOT_KEYS = ("momentum_buffer",)

    def __init__(
        self,
        params,
        layouts: Mapping[torch.Tensor, object],
        lr: float = 1e-3,
        momentum: float = 0.0,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"lr, eps and weight_decay must be >= 0, got {lr}, {eps}, {weight_decay}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if decay_problem(lr, weight_decay):
            raise ValueError(decay_problem(lr, weight_decay))
        super().__init__(params, dict(lr=lr, momentum=momentum, eps=eps, weight_decay=weight_decay))
        self.layouts = dict(layouts)
        missing = [p for g in self.param_groups for p in g["params"] if p not in self.layouts]
        if missing:
            raise ValueError(f"{len(missing)} parameter(s) have no layout (indices and dense shape)")

    def _init_state(self, param):
        out_features, in_features = self.layouts[param].dense_shape
        state = {
            "row_acc": torch.zeros(out_features, dtype=torch.float32, device=param.device),
            "col_acc": torch.zeros(in_features, dtype=torch.float32, device=param.device),
        }
        if any(g["momentum"] > 0 and any(p is param for p in g["params"]) for g in self.param_groups):
            state["momentum_buffer"] = torch.zeros(param.shape, dtype=torch.float32, device=param.device)
        return state

    def accumulators(self, param: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row_acc, col_acc) of ``param`` (zeros before its first step)."""
        state = self._state_for(param)
        return state["row_acc"], state["col_acc"]

    def _update(self, p, grad, state, group):
        lr, momentum, eps, wd = group["lr"], group["momentum"], group["eps"], group["weight_decay"]
        layout = self.layouts[p]
        rows, cols = rows_cols(layout.indices, layout.dense_shape[1])
        rows, cols = rows.long(), cols.long()
        row_acc, col_acc = state["row_acc"], state["col_acc"]
        # index_select: the same values as row_acc[rows], several times faster on CPU
        u = torch.minimum(row_acc.index_select(0, rows), col_acc.index_select(0, cols)).addcmul_(grad, grad)
        row_acc.scatter_reduce_(0, rows, u, "amax", include_self=True)
        col_acc.scatter_reduce_(0, cols, u, "amax", include_self=True)
        update = grad / (u + eps).sqrt_()
        if momentum > 0:
            buf = state["momentum_buffer"]
            buf.mul_(momentum).add_(update, alpha=1 - momentum)
            update = buf
        p.copy_(p.to(torch.float32).mul_(1 - lr * wd).sub_(update, alpha=lr))
