"""Shared machinery for optimizers over sparse-delta values: per-slot state that can be reset for
regrown slots and permuted when the indices are re-sorted, and that keeps its dtypes across save/load."""

from __future__ import annotations

import torch


def decay_problem(lr: float, weight_decay: float) -> str | None:
    """Why a (rate, decay) pair cannot train, or None. Decoupled decay multiplies every value by
    ``1 − lr·λ`` per step: at ``lr·λ ≥ 1`` that zeroes or flips the sign of every value each step (past 2 it
    grows them geometrically) instead of shrinking them. The peak ``lr`` is the one to check (schedules
    only lower it)."""
    if lr * weight_decay >= 1:
        return (
            f"lr·weight_decay = {lr:g}·{weight_decay:g} = {lr * weight_decay:g} >= 1: decoupled decay multiplies "
            f"every value by (1 − lr·weight_decay) = {1 - lr * weight_decay:g} each step, flipping or exploding "
            f"them; use weight_decay < 1/lr = {1 / lr:g}"
        )
    return None


class SlotStateOptimizer(torch.optim.Optimizer):
    """Base class. Subclasses list their per-slot state keys (tensors shaped like the parameter) in
    ``SLOT_KEYS``."""

    SLOT_KEYS: tuple[str, ...] = ()

    def _init_state(self, param: torch.Tensor) -> dict:
        raise NotImplementedError

    def _update(self, param: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
        """Update one parameter in place from its fp32 gradient."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError(f"{type(self).__name__} takes dense gradients of the values vector")
            if self._foreach_ok(params):
                self._update_all(
                    params,
                    [p.grad.to(torch.float32) for p in params],
                    [self._state_for(p) for p in params],
                    group,
                )
                continue
            for p in params:
                self._update(p, p.grad.to(torch.float32), self._state_for(p), group)
        return loss

    def _foreach_ok(self, params: list[torch.Tensor]) -> bool:
        """Whether :meth:`_update_all` takes these parameters at once (subclasses that have one)."""
        return False

    def _update_all(self, params: list, grads: list, states: list, group: dict) -> None:
        """:meth:`_update` of every parameter of a group at once (multi-tensor kernels)."""
        raise NotImplementedError

    def group_of(self, param: torch.Tensor) -> dict:
        """The param group holding ``param`` (its lr, weight decay, betas, ...)."""
        for group in self.param_groups:
            if any(p is param for p in group["params"]):
                return group
        raise KeyError(f"the parameter is not in this {type(self).__name__}")

    def _state_for(self, param: torch.Tensor) -> dict:
        state = self.state[param]
        if not state:
            state.update(self._init_state(param))
        return state

    @torch.no_grad()
    def reset_slots(self, param: torch.Tensor, slots: torch.Tensor, **values) -> None:
        """Set per-slot state at ``slots`` (positions in ``param``): each key given in ``values`` takes
        that tensor (or scalar), every other per-slot key is zeroed."""
        unknown = set(values) - set(self.SLOT_KEYS)
        if unknown:
            raise KeyError(
                f"{type(self).__name__} has no per-slot state {sorted(unknown)}; has {self.SLOT_KEYS}"
            )
        state = self._state_for(param)
        slots = slots.to(device=param.device, dtype=torch.long)
        for key in self.SLOT_KEYS:
            if key not in state:
                continue
            new = values.get(key, 0)
            if torch.is_tensor(new):
                new = new.to(device=state[key].device, dtype=state[key].dtype)
            state[key][slots] = new

    @torch.no_grad()
    def resize_slots(self, param: torch.Tensor, keep: torch.Tensor, n_new: int) -> None:
        """After ``param`` changed size: its per-slot state becomes the state at the old ``keep`` slots
        followed by ``n_new`` zeroed slots (set them with :meth:`reset_slots`)."""
        self._take_slots(param, keep, n_new)

    @torch.no_grad()
    def permute_slots(self, param: torch.Tensor, perm: torch.Tensor) -> None:
        """Reorder per-slot state so that new slot i holds what old slot ``perm[i]`` held."""
        self._take_slots(param, perm, 0)

    def _take_slots(self, param: torch.Tensor, index: torch.Tensor, n_new: int) -> None:
        """Each per-slot state of ``param`` becomes its old slots ``index``, then ``n_new`` zeroed slots."""
        state = self.state.get(param)
        if not state:
            return
        index = index.to(device=param.device, dtype=torch.long)
        for key in self.SLOT_KEYS:
            if key in state:
                taken = state[key].index_select(0, index)  # state[key][index], faster on CPU
                state[key] = (
                    torch.cat([taken, taken.new_zeros((n_new, *taken.shape[1:]))]) if n_new else taken
                )

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's, but state keeps its saved dtypes: torch casts every state tensor of a bf16
        parameter to bf16, which would round fp32 moments and turn integer ages into bf16 counters."""
        super().load_state_dict({**state_dict, "state": {}})
        params = {
            pid: p
            for saved, group in zip(state_dict["param_groups"], self.param_groups, strict=True)
            for pid, p in zip(saved["params"], group["params"], strict=True)
        }
        for pid, saved_state in state_dict["state"].items():
            param = params[pid]
            self.state[param] = {
                k: v.to(param.device).clone() if torch.is_tensor(v) else v for k, v in saved_state.items()
            }
