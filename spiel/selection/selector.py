"""The Selector: SpIEL's drop/grow loop around an optimizer.

Call ``selector.step()`` once after every optimizer step (after ``zero_grad`` is fine). It counts
steps, runs the gradient-estimation phases of SpIEL-AG through the layers' growth probes, and at
every reselection step drops the weakest slots and grows new indices into them, moving optimizer
state with the slots and re-sorting the indices (kept sorted and unique at all times).
"""

from __future__ import annotations

import torch

from ..delta.indices import isin_sorted
from ..delta.layer import SparseDeltaLinear
from ..optim import SparseAdamW, SparseSM3
from .distributed import all_reduce_mean_, broadcast_from_rank0, check_same_on_all_ranks, world_size
from .drop import DROP_CRITERIA, drop_order
from .grow import ag_grow_order, ma_grow_indices, top_candidates
from .schedule import ReselectionSchedule

METHODS = ("ag", "ma")
PHASE_KEYS = ("candidates", "step_grad", "grad_sum", "grad_sq_sum")


class _Phase:
    """One layer's SpIEL-AG estimation statistics at its growth candidates (all fp32)."""

    def __init__(self):
        self.candidates = None  # sorted int64 flat positions [K], from the phase's first micro-batch
        self.step_grad = None  # sum of this optimizer step's micro-batch gradients
        self.grad_sum = None  # sum over completed steps of the step gradient
        self.grad_sq_sum = None  # ... and of its square
        self.steps = 0
        self.synced = False  # candidates agreed across ranks


class Selector:
    def __init__(self, layers: dict[str, SparseDeltaLinear], optimizer, *, method: str, total_steps: int,
                 reselection_steps: int = 20, estimation_steps: int = 5, schedule: str = "linear",
                 initial_rate: float = 0.2, drop: str = "magnitude", process_group=None):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if drop not in DROP_CRITERIA:
            raise ValueError(f"drop must be one of {DROP_CRITERIA}, got {drop!r}")
        expected = SparseAdamW if method == "ag" else SparseSM3
        if not isinstance(optimizer, expected):
            raise TypeError(f"method {method!r} needs a {expected.__name__}, got {type(optimizer).__name__}")
        self.layers = dict(layers)
        self.optimizer = optimizer
        self.method = method
        self.drop = drop
        self.group = process_group
        self.schedule = ReselectionSchedule(total_steps, reselection_steps, estimation_steps, schedule, initial_rate)
        if method == "ag" and estimation_steps < 2 and world_size(process_group) > 1:
            raise ValueError("SpIEL-AG under data parallelism needs estimation_steps >= 2: the first step of each "
                             "phase is spent agreeing on rank 0's growth candidates")
        self.t = 0
        self.phases = {name: _Phase() for name in self.layers}
        self.references = {}  # values at the last reselection, for drop="change"
        if drop == "change":
            self.references = {n: layer.values.detach().clone() for n, layer in self.layers.items()}
        if method == "ag":
            # Adam ages derived from grown_at (no per-slot age counter): every grown slot is seeded with the
            # phase's step count, γ (γ − 1 under data parallelism, whose first phase step agrees on candidates).
            head_start = estimation_steps - (1 if world_size(process_group) > 1 else 0)
            for layer in self.layers.values():
                optimizer.link_ages(layer.values, layer.grown_at, head_start)
        self._install_probes()

    # -- the per-step hook -----------------------------------------------------------------------------
    def step(self) -> None:
        self.t += 1
        if self.method == "ag":
            self._fold_step_gradients()
        if self.schedule.is_reselection(self.t):
            for layer in self.layers.values():
                layer.restore_base()  # indices are edited in place below (merged storage re-merges lazily)
            for name in self.layers:
                self._reselect(name)
            self.phases = {name: _Phase() for name in self.layers}
        self._install_probes()

    def close(self) -> None:
        """Remove every probe (end of training)."""
        for layer in self.layers.values():
            layer.clear_probes()

    # -- SpIEL-AG estimation phase ---------------------------------------------------------------------
    def _install_probes(self) -> None:
        """Make the layers' probes match the state: request the first micro-batch's dense gradient at
        a phase start, keep gathering at the candidates during a phase, nothing otherwise."""
        for name, layer in self.layers.items():
            layer.clear_probes()
            if self.method != "ag" or not self.schedule.in_estimation_phase(self.t):
                continue
            phase = self.phases[name]
            if phase.candidates is None:
                layer.request_dense_grad(self._on_first_dense_grad(name))
            else:
                layer.set_candidate_probe(phase.candidates, self._on_candidate_grad(name))

    def _on_first_dense_grad(self, name):
        def callback(dense_grad: torch.Tensor) -> None:
            layer, phase = self.layers[name], self.phases[name]
            phase.candidates = top_candidates(dense_grad, layer.k)
            phase.step_grad = dense_grad.reshape(-1)[phase.candidates].float()
            layer.set_candidate_probe(phase.candidates, self._on_candidate_grad(name))

        return callback

    def _on_candidate_grad(self, name):
        def callback(grad: torch.Tensor) -> None:
            self.phases[name].step_grad += grad

        return callback

    def _fold_step_gradients(self) -> None:
        for phase in self.phases.values():
            if phase.candidates is None:
                continue
            if not phase.synced and world_size(self.group) > 1:
                # Rank 0's candidates for everyone; this step's local statistics at other ranks'
                # candidates are unusable, so every rank starts the statistics from the next step.
                broadcast_from_rank0(phase.candidates, self.group)
                phase.step_grad.zero_()
                phase.synced = True
                continue
            phase.synced = True
            step_grad = all_reduce_mean_(phase.step_grad, self.group)
            if phase.grad_sum is None:
                phase.grad_sum = torch.zeros_like(step_grad)
                phase.grad_sq_sum = torch.zeros_like(step_grad)
            phase.grad_sum += step_grad
            phase.grad_sq_sum += step_grad * step_grad
            phase.steps += 1
            step_grad.zero_()

    # -- reselection -------------------------------------------------------------------------------------
    @torch.no_grad()
    def _reselect(self, name: str) -> None:
        layer = self.layers[name]
        n = self.schedule.num_to_replace(layer.k, self.t)
        if n == 0:
            return
        slots = drop_order(layer.values, n, self.drop, self.references.get(name))
        dropped = layer.indices[slots].long()
        if self.method == "ag":
            slots, new_indices, seeds = self._ag_grow(name, slots, dropped, n)
        else:
            slots, new_indices, seeds = self._ma_grow(name, slots, n)
        if new_indices.numel():
            if self.method == "ag":
                self._keep_ages_exact(layer, seeds["age"])
            layer.indices[slots] = new_indices.to(layer.indices.dtype)
            layer.values[slots] = 0
            layer.grown_at[slots] = self.t
            if layer.values.grad is not None:
                layer.values.grad[slots] = 0
            self.optimizer.reset_slots(layer.values, slots, **seeds)
            self._sort(name)
        check_same_on_all_ranks(layer.indices, f"the indices of {name}", self.group)
        if name in self.references:
            self.references[name] = layer.values.detach().clone()

    def _ag_grow(self, name, slots, dropped, n):
        layer, phase = self.layers[name], self.phases[name]
        if phase.candidates is None or phase.steps == 0:
            return slots[:0], dropped[:0], {}
        keep = torch.ones(layer.k, dtype=torch.bool, device=slots.device)
        keep[slots] = False
        staying = layer.indices[keep].long()
        mean = phase.grad_sum / phase.steps
        mean_sq = phase.grad_sq_sum / phase.steps
        chosen = ag_grow_order(phase.candidates, mean, staying, n)
        grown_all = phase.candidates[chosen]
        # A position both dropped and grown stays where it is, with its value and optimizer state.
        regrown = isin_sorted(grown_all, dropped.sort().values)
        chosen, grown = chosen[~regrown], grown_all[~regrown]
        free = slots[~isin_sorted(dropped, grown_all.sort().values)][: grown.numel()]
        # Seed Adam with the phase statistics, pre-multiplied by (1 − β^age) so that Adam's bias
        # correction at this age gives back the unbiased estimates.
        beta1, beta2 = self._betas(layer.values)
        age = phase.steps
        seeds = {
            "exp_avg": mean[chosen] * (1 - beta1**age),
            "exp_avg_sq": mean_sq[chosen] * (1 - beta2**age),
            "age": age,
        }
        return free, grown, seeds

    def _keep_ages_exact(self, layer, seed_age: int) -> None:
        """Linked Adam ages read ``grown_at`` as update counts with one seed age; where a skipped update or
        a different seed would break that, the optimizer keeps this layer's ages per slot from now on."""
        opt = self.optimizer
        head_start = opt.linked_head_start(layer.values)
        if head_start is not None and (opt.update_count(layer.values) != self.t or seed_age != head_start):
            opt.unlink_ages(layer.values)

    def _ma_grow(self, name, slots, n):
        layer = self.layers[name]
        row_acc, col_acc = self.optimizer.accumulators(layer.values)
        # Every active position is excluded, the dropped ones too: a weight is not regrown in the
        # round that drops it (its row/col statistics would just pick it again).
        grown = ma_grow_indices(row_acc, col_acc, layer.indices, n)
        return slots[: grown.numel()], grown, {}

    def _betas(self, param):
        for group in self.optimizer.param_groups:
            if any(p is param for p in group["params"]):
                return group["betas"]
        raise KeyError("the values parameter is not in the optimizer")

    def _sort(self, name: str) -> None:
        layer = self.layers[name]
        perm = torch.sort(layer.indices, stable=True).indices
        layer.indices.copy_(layer.indices[perm])
        layer.values.copy_(layer.values[perm])
        layer.grown_at.copy_(layer.grown_at[perm])
        if layer.values.grad is not None:
            layer.values.grad.copy_(layer.values.grad[perm])
        self.optimizer.permute_slots(layer.values, perm)

    # -- resume --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        phases = {}
        for name, phase in self.phases.items():
            entry = {key: getattr(phase, key) for key in PHASE_KEYS if getattr(phase, key) is not None}
            entry.update(steps=phase.steps, synced=phase.synced)
            phases[name] = entry
        return {"t": self.t, "method": self.method, "schedule": vars(self.schedule).copy(),
                "phases": phases, "references": dict(self.references), "grown_at": self._grown_at_digest()}

    def _grown_at_digest(self) -> dict:
        # the model's growth steps this state belongs to: AG's Adam ages derive from them
        return {n: (int(layer.grown_at.sum()), int(layer.grown_at.max())) for n, layer in self.layers.items()}

    def load_state_dict(self, state: dict) -> None:
        if state["method"] != self.method or state["schedule"] != vars(self.schedule):
            raise ValueError(
                f"selector state is for method={state['method']} {state['schedule']}, "
                f"this selector is method={self.method} {vars(self.schedule)}"
            )
        if set(state["phases"]) != set(self.layers):
            raise ValueError("selector state names different modules than this model")
        digest = self._grown_at_digest()
        differ = [n for n, d in state.get("grown_at", {}).items() if tuple(d) != digest[n]]
        if differ:  # e.g. the delta came from a compact (inference) checkpoint, which holds no grown_at
            raise ValueError(
                f"the model's grown_at (the step each entry was grown at) is not the one this selector state was "
                f"saved with ({len(differ)} module(s), e.g. {differ[0]}); resume from a training checkpoint "
                "(save_pretrained(..., compact=False), as spiel-train's checkpoint-N/), not a compact final one")
        self.t = int(state["t"])
        self.phases = {}
        for name, entry in state["phases"].items():
            phase = _Phase()
            for key in PHASE_KEYS:
                if key in entry:
                    setattr(phase, key, entry[key].clone())
            phase.steps, phase.synced = int(entry["steps"]), bool(entry["synced"])
            self.phases[name] = phase
        self.references = {n: r.clone() for n, r in state["references"].items()}
        self._install_probes()
