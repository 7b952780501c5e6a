"""SparseAdamW: AdamW for sparse-delta values with a per-index age for bias correction.

Each slot of a values vector may have been grown at a different step, so each has its own age (Adam
steps since its state was (re)seeded) and Adam's bias correction uses it: ``m̂ = m / (1 − β1^age)``,
``v̂ = v / (1 − β2^age)``. Moments are fp32 whatever the values' dtype (bf16 would round them).

Ages are not stored as a counter per slot. The optimizer counts its updates per parameter (``step``) and
a slot's age is ``step − born``:

* on its own, a parameter keeps an int32 ``born`` per slot (the update count at which the slot's age
  was 0);
* linked (:meth:`link_ages`, what SpIEL-AG's selector does), it keeps nothing per slot: the layer's
  ``grown_at`` (the optimizer step each slot was grown at, kept anyway for the age report) gives
  ``age = step − grown_at + head_start`` for grown slots (``grown_at > 0``), ``step`` for the initial ones.
  This holds while the optimizer's update count equals the selector's step count and every growth
  seeds the same age; :meth:`unlink_ages` turns the ages back into a per-slot tensor when it would not.

So SpIEL-AG holds 24 bytes per tunable entry (value, gradient, two moments, int32 index, int32
``grown_at``) instead of 36 with int64 ages and growth steps.

Adam's eps (``eps_placement``): ``torch`` adds it to ``√v̂`` (torch.optim.AdamW); ``hf`` adds it to ``√v``
before the bias correction (HF's AdamW, the optimizer of the paper's released code: an effective eps of
``eps / √(1 − β2^age)``, larger in a slot's first steps).

Weight decay is decoupled, ``p ← p − lr·λ·p``, pulling each delta toward 0, i.e. toward the
pretrained weight (the paper uses λ up to 30).
"""

from __future__ import annotations

import torch

from spiel.optim.slot_state import SlotStateOptimizer, decay_problem

EPS_PLACEMENTS = ("torch", "hf")


class SparseAdamW(SlotStateOptimizer):
    SLOT_KEYS = ("exp_avg", "exp_avg_sq", "born")
    RESET_KEYS = ("exp_avg", "exp_avg_sq", "age")

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        eps_placement: str = "torch",
        foreach: bool = True,
    ):
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if eps < 0 or weight_decay < 0:
            raise ValueError(f"eps and weight_decay must be >= 0, got {eps}, {weight_decay}")
        if eps_placement not in EPS_PLACEMENTS:
            raise ValueError(f"eps_placement must be one of {EPS_PLACEMENTS}, got {eps_placement!r}")
        if decay_problem(lr, weight_decay):
            raise ValueError(decay_problem(lr, weight_decay))
        super().__init__(
            params,
            dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, eps_placement=eps_placement),
        )
        self._links: dict[torch.Tensor, tuple[torch.Tensor, int]] = {}
        # One multi-tensor kernel per operation for all values of a group (torch's ``_foreach`` ops), instead of
        # one kernel per operation and parameter; False: parameter by parameter (the same arithmetic).
        self.foreach = foreach

    # -- ages -----------------------------------------------------------------------------------------------
    def link_ages(self, param: torch.Tensor, grown_at: torch.Tensor, head_start: int) -> None:
        """Derive ``param``'s ages from ``grown_at`` (shared, not copied) instead of a per-slot tensor.

        Only for a parameter with no per-slot ages yet (a fresh one, or one resumed from a linked run);
        otherwise its own ages stay in use and this is a no-op."""
        if grown_at.shape != param.shape:
            raise ValueError(
                f"grown_at {tuple(grown_at.shape)} does not match the values {tuple(param.shape)}"
            )
        if int(head_start) < 0:
            raise ValueError(f"head_start is the age grown slots start at: must be >= 0, got {head_start}")
        if "born" in self.state.get(param, {}):
            return
        self._links[param] = (grown_at, int(head_start))

    def is_linked(self, param: torch.Tensor) -> bool:
        return param in self._links and "born" not in self.state.get(param, {})

    def linked_head_start(self, param: torch.Tensor) -> int | None:
        """The seed age of grown slots if ``param``'s ages are derived from ``grown_at``, else None."""
        return self._links[param][1] if self.is_linked(param) else None

    def update_count(self, param: torch.Tensor) -> int:
        return int(self._state_for(param)["step"])

    @torch.no_grad()
    def ages(self, param: torch.Tensor) -> torch.Tensor:
        """Every slot's current age (int64): the number of Adam steps its bias correction has counted."""
        state = self._state_for(param)
        step = state["step"]
        if "born" in state:
            return step - state["born"].long()
        if param not in self._links:
            raise RuntimeError(
                "SparseAdamW: this parameter's state has no per-slot ages and no link to its growth steps; "
                "call link_ages(values, layer.grown_at, head_start) (the SpIEL selector does) before stepping"
            )
        grown_at, head_start = self._links[param]
        grown = grown_at.long()
        return torch.where(grown > 0, step - grown + head_start, step)

    @torch.no_grad()
    def unlink_ages(self, param: torch.Tensor) -> None:
        """Keep ``param``'s current ages in its own int32 tensor from now on."""
        if self.is_linked(param):
            state = self._state_for(param)
            state["born"] = (state["step"] - self.ages(param)).to(torch.int32)
        self._links.pop(param, None)

    # -- the update -----------------------------------------------------------------------------------------
    def _init_state(self, param):
        state = {
            "step": torch.zeros((), dtype=torch.int64),
            "exp_avg": torch.zeros(param.shape, dtype=torch.float32, device=param.device),
            "exp_avg_sq": torch.zeros(param.shape, dtype=torch.float32, device=param.device),
        }
        if param not in self._links:
            state["born"] = torch.zeros(param.shape, dtype=torch.int32, device=param.device)
        return state

    def _update(self, p, grad, state, group):
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        state["step"] += 1
        m.mul_(beta1).add_(grad, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        (bias1,), (bias2,) = self._bias_corrections([p], beta1, beta2)
        if group.get("eps_placement", "torch") == "hf":  # .get: groups saved before the option lack it
            denom = v.sqrt().add_(eps).div_(bias2.sqrt())
        else:
            denom = (v / bias2).sqrt_().add_(eps)
        update = (m / bias1).div_(denom)
        # Decoupled decay first (as torch.optim.AdamW), computed in fp32 for bf16 values.
        p.copy_(p.to(torch.float32).mul_(1 - lr * wd).sub_(update, alpha=lr))

    def _bias_corrections(self, params, beta1: float, beta2: float) -> tuple[list, list]:
        """Each slot's ``1 − β1^age`` and ``1 − β2^age`` (fp32), looked up by age in a table computed in float64
        (ages are whole numbers: a gather per slot instead of two fp32 ``pow``, which were most of the step)."""
        ages = [self.ages(p).to(p.device) for p in params]
        top = max(self._age_bound(p) for p in params)
        unbounded = [
            a.max() for p, a in zip(params, ages, strict=True) if not self.is_linked(p) and a.numel()
        ]
        if unbounded:  # per-slot ages: their largest, read back once for all parameters
            top = max(top, int(torch.stack([a.to(params[0].device) for a in unbounded]).max()))
        steps = torch.arange(top + 1, dtype=torch.float64, device=params[0].device)
        table1 = (1 - torch.pow(beta1, steps)).float()
        table2 = (1 - torch.pow(beta2, steps)).float()
        # index_select: table[a], several times faster on CPU
        return (
            [table1.to(a.device).index_select(0, a) for a in ages],
            [table2.to(a.device).index_select(0, a) for a in ages],
        )

    def _age_bound(self, p: torch.Tensor) -> int:
        """The largest age ``p``'s slots can have by its update count alone: ages derived from ``grown_at`` are
        at most ``step + head_start``; per-slot ones may be older (reset with an age) and are read back."""
        step = int(self._state_for(p)["step"])
        return step + self._links[p][1] if self.is_linked(p) else step

    def _foreach_ok(self, params):
        return self.foreach and len(params) > 1 and len({(p.device, p.dtype) for p in params}) == 1

    def _update_all(self, params, grads, states, group):
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        ms, vs = [st["exp_avg"] for st in states], [st["exp_avg_sq"] for st in states]
        for state in states:
            state["step"] += 1
        torch._foreach_mul_(ms, beta1)
        torch._foreach_add_(ms, grads, alpha=1 - beta1)
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, grads, grads, value=1 - beta2)
        bias1, bias2 = self._bias_corrections(params, beta1, beta2)
        if group.get("eps_placement", "torch") == "hf":  # as _update
            denom = torch._foreach_sqrt(vs)
            torch._foreach_add_(denom, eps)
            torch._foreach_sqrt_(bias2)
            torch._foreach_div_(denom, bias2)
        else:
            denom = torch._foreach_div(vs, bias2)
            torch._foreach_sqrt_(denom)
            torch._foreach_add_(denom, eps)
        update = torch._foreach_div(ms, bias1)
        torch._foreach_div_(update, denom)
        full = [p.to(torch.float32) for p in params]  # the values themselves when fp32
        torch._foreach_mul_(full, 1 - lr * wd)
        torch._foreach_sub_(full, update, alpha=lr)
        if full[0] is not params[0]:
            torch._foreach_copy_(params, full)

    # -- slots ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def reset_slots(self, param: torch.Tensor, slots: torch.Tensor, **values) -> None:
        """Seed the state at ``slots``: ``exp_avg`` / ``exp_avg_sq`` (default 0) and ``age`` (default 0:
        the next step is the slot's first). A linked parameter takes its ages from ``grown_at``, which the
        caller sets to the current update count; a seed age other than the link's head start is refused."""
        unknown = set(values) - set(self.RESET_KEYS)
        if unknown:
            raise KeyError(f"SparseAdamW has no per-slot state {sorted(unknown)}; has {self.RESET_KEYS}")
        age = values.pop("age", 0)
        state = self._state_for(param)
        super().reset_slots(param, slots, **values)
        head_start = self.linked_head_start(param)
        if head_start is not None:
            if torch.is_tensor(age) and age.numel() != 1 or int(age) != head_start:
                raise ValueError(
                    f"linked ages seed every grown slot at age {head_start}, got {age}; "
                    "call unlink_ages first"
                )
            return
        slots = slots.to(device=param.device, dtype=torch.long)
        if torch.is_tensor(age):
            age = age.to(device=param.device, dtype=torch.int64)
        state["born"][slots] = (state["step"].to(param.device) - age).to(torch.int32)

    def load_state_dict(self, state_dict: dict) -> None:
        """As the base class's; a state saved before ages were derived (a per-slot int64 ``age``, no
        ``step``) is converted to the same ages exactly."""
        super().load_state_dict(state_dict)
        for state in self.state.values():
            if "age" in state and "step" not in state:
                age = state.pop("age")
                state["step"] = torch.zeros((), dtype=torch.int64)
                state["born"] = (-age).to(torch.int32)
