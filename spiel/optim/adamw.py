"""SparseAdamW: AdamW for sparse-delta values with a per-index age for bias correction.

Each slot of a values vector may have been grown at a different step, so each keeps its own step
count (``age``) and Adam's bias correction uses it: ``m̂ = m / (1 − β1^age)``, ``v̂ = v / (1 − β2^age)``.
Moments and ages are fp32/int64 whatever the values' dtype (bf16 counters would stop at 256).
Weight decay is decoupled, ``p ← p − lr·λ·p``, pulling each delta toward 0, i.e. toward the
pretrained weight (the paper uses λ up to 30).
"""

from __future__ import annotations

import torch

from .slot_state import SlotStateOptimizer


class SparseAdamW(SlotStateOptimizer):
    SLOT_KEYS = ("exp_avg", "exp_avg_sq", "age")

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if eps < 0 or weight_decay < 0:
            raise ValueError(f"eps and weight_decay must be >= 0, got {eps}, {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _init_state(self, param):
        return {
            "exp_avg": torch.zeros(param.shape, dtype=torch.float32, device=param.device),
            "exp_avg_sq": torch.zeros(param.shape, dtype=torch.float32, device=param.device),
            "age": torch.zeros(param.shape, dtype=torch.int64, device=param.device),
        }

    def _update(self, p, grad, state, group):
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        m, v, age = state["exp_avg"], state["exp_avg_sq"], state["age"]
        age.add_(1)
        m.mul_(beta1).add_(grad, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        age_f = age.to(torch.float32)
        bias1 = 1 - torch.pow(beta1, age_f)
        bias2 = 1 - torch.pow(beta2, age_f)
        denom = (v / bias2).sqrt_().add_(eps)
        update = (m / bias1).div_(denom)
        # Decoupled decay first (as torch.optim.AdamW), computed in fp32 for bf16 values.
        p.copy_(p.to(torch.float32).mul_(1 - lr * wd).sub_(update, alpha=lr))
