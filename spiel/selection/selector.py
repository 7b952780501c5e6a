"""The Selector: SpIEL's drop/grow loop around an optimizer.

Call ``selector.step()`` once after every optimizer step (after ``zero_grad`` is fine). It counts steps,
lets the method's growth rule gather what it needs (SpIEL-AG's estimation phases, through the layers'
growth probes), and at every reselection step drops the weakest slots and grows the rule's positions into
them, moving optimizer state with the slots and re-sorting the indices (kept sorted and unique at all
times). The loop is the same for every method; what differs lives in the rule (``rules/``), paired with its
optimizer in ``methods.py``. With ``budget="global"`` one reselection covers all matrices together
(``global_budget.py``).
"""

from __future__ import annotations

import torch

from spiel.delta.indices import isin_sorted
from spiel.delta.layer import SparseDeltaLinear
from spiel.selection.batched import (
    drop_order_rows,
    isin_sorted_rows,
    kept_slots,
    layer_groups,
    sort_rows,
    valid_first,
)
from spiel.selection.config import SelectionConfig
from spiel.selection.distributed import check_same_on_all_ranks, world_size
from spiel.selection.drop import drop_order
from spiel.selection.global_budget import global_drop, global_growth_mask, resize_layer
from spiel.selection.methods import check_for_method, growth_rule, method_spec
from spiel.selection.order import order_by
from spiel.selection.schedule import ReselectionSchedule

__all__ = ["Selector"]


class Selector:
    """``config``: the reselection knobs (a SelectionConfig, e.g. the model's SpielConfig), validated there;
    ``method`` and ``seed`` (the growth rules' random draws) as the model's."""

    def __init__(
        self,
        layers: dict[str, SparseDeltaLinear],
        optimizer,
        config: SelectionConfig,
        *,
        method: str,
        seed: int,
        total_steps: int,
        process_group=None,
    ):
        check_for_method(config, method)
        spec = method_spec(method)
        if not isinstance(optimizer, spec.optimizer):
            raise TypeError(
                f"method {method!r} needs a {spec.optimizer.__name__}, got {type(optimizer).__name__}"
            )
        if config.budget == "global" and world_size(process_group) > 1:
            raise ValueError(
                "budget='global' resizes each matrix's entries, which data parallelism (fixed "
                "gradient buckets) cannot follow; use budget='per_matrix'"
            )
        self.layers = dict(layers)
        self.optimizer = optimizer
        self.config = config
        self.budget, self.method, self.growth, self.drop = config.budget, method, config.growth, config.drop
        self.group = process_group
        self.schedule = ReselectionSchedule.of(total_steps, config)
        self.rule = growth_rule(method, config.growth)(
            self.layers, optimizer, self.schedule, config, seed, process_group
        )
        self.t = 0
        # Reselect the matrices of one shape together (``batched.py``; the same result as one by one, in far
        # fewer kernels and host round-trips). False: one by one, as a reference and for measurements.
        self.batched = True
        self.references = {}  # values at the last reselection, for drop="change"
        if config.drop == "change":
            self.references = {n: layer.values.detach().clone() for n, layer in self.layers.items()}
        self.rule.prepare(self.t)

    @property
    def estimates_gradients(self) -> bool:
        """Whether the growth rule gathers gradients in estimation phases (SpIEL-AG's probes)."""
        return self.rule.estimates_gradients

    @property
    def reselects(self) -> bool:
        """False for static sparsity (``growth="static"``): the initial positions stay."""
        return self.rule.reselects

    # -- the per-step hook -----------------------------------------------------------------------------
    def step(self) -> None:
        self.t += 1
        self.rule.after_step(self.t)
        if self.reselects and self.schedule.is_reselection(self.t):
            for layer in self.layers.values():
                layer.restore_base()  # indices are edited in place below (merged storage re-merges lazily)
            if self.budget == "global":
                self._reselect_global()
            else:
                self._reselect_per_matrix()
            self.rule.end_period()
        self.rule.prepare(self.t)

    def close(self) -> None:
        """Remove every probe (end of training)."""
        self.rule.close()

    # -- reselection -------------------------------------------------------------------------------------
    @torch.no_grad()
    def _reselect(self, name: str) -> None:
        layer = self.layers[name]
        n = self.schedule.num_to_replace(layer.k, self.t)
        if n == 0:
            return
        slots = drop_order(layer.values, n, self.drop, self.references.get(name))
        self._grow_into(name, slots)
        check_same_on_all_ranks(layer.indices, f"the indices of {name}", self.group)
        if name in self.references:
            self.references[name] = layer.values.detach().clone()

    def _grow_into(self, name: str, slots: torch.Tensor) -> None:
        """Grow the rule's positions into the dropped ``slots``; slots left over keep their entries."""
        layer = self.layers[name]
        dropped = layer.indices[slots].long()
        keep = torch.ones(layer.k, dtype=torch.bool, device=slots.device)
        keep[slots] = False
        grown_all, seeds = self.rule.grow(
            name, slots.numel(), layer.indices[keep].long(), layer.indices, self.t
        )
        # A position both dropped and grown stays where it is, with its value and optimizer state.
        regrown = isin_sorted(grown_all, dropped.sort().values)
        grown = grown_all[~regrown]
        if grown.numel() == 0:
            return
        seeds = {key: value[~regrown] if torch.is_tensor(value) else value for key, value in seeds.items()}
        free = slots[~isin_sorted(dropped, grown_all.sort().values)][: grown.numel()]
        self._write(layer, free, grown, seeds)
        self._sort_layers([layer])

    def _write(self, layer: SparseDeltaLinear, free: torch.Tensor, grown: torch.Tensor, seeds: dict) -> None:
        """The ``grown`` positions take the ``free`` slots: value 0, grown now, optimizer state from ``seeds``."""
        self.rule.before_write(layer, seeds, self.t)
        layer.indices[free] = grown.to(layer.indices.dtype)
        layer.values[free] = 0
        layer.grown_at[free] = self.t
        if layer.values.grad is not None:
            layer.values.grad[free] = 0
        self.optimizer.reset_slots(layer.values, free, **seeds)

    def _reselect_per_matrix(self) -> None:
        groups = layer_groups(self.layers) if self.batched else [[name] for name in self.layers]
        for names in groups:
            if not (self.batched and self._reselect_group(names)):
                for name in names:
                    self._reselect(name)

    @torch.no_grad()
    def _reselect_group(self, names: list[str]) -> bool:
        """``_reselect`` of every layer in ``names`` (same shape and ``k``) at once, as row-wise operations over
        their stacked tensors (``batched.py``), with one read-back of sizes for the group. False (nothing
        done) when the rule cannot grow them together: then they go one by one."""
        layers = [self.layers[name] for name in names]
        k = layers[0].k
        n = self.schedule.num_to_replace(k, self.t)
        if n == 0:
            return True
        references = torch.stack([self.references[name] for name in names]) if self.references else None
        slots = drop_order_rows(
            torch.stack([layer.values.detach() for layer in layers]), n, self.drop, references
        )
        indices = torch.stack([layer.indices for layer in layers])
        staying = indices.gather(1, kept_slots(slots, k)).long()
        offer = self.rule.grow_rows(names, slots.shape[1], staying, indices, self.t)
        if offer is None:
            return False
        grown_all, valid, seeds = offer
        grown_all = grown_all.long()
        dropped = indices.gather(1, slots).long()
        # As in _grow_into: a position both dropped and grown stays where it is.
        numel = layers[0].out_features * layers[0].in_features
        fresh = valid & ~isin_sorted_rows(grown_all, sort_rows(dropped, numel)[0])
        offered = sort_rows(torch.where(valid, grown_all, numel), numel + 1)[0]  # numel: no position
        free = ~isin_sorted_rows(dropped, offered)
        grown_order, free_order = valid_first(fresh), valid_first(free)
        grown = grown_all.gather(1, grown_order)
        free_slots = slots.gather(1, free_order)
        seeds = {
            key: value.gather(1, grown_order) if torch.is_tensor(value) else value
            for key, value in seeds.items()
        }
        counts = fresh.sum(1).tolist()  # the group's one read-back of sizes
        changed = []
        for i, (layer, count) in enumerate(zip(layers, counts, strict=True)):
            if count:
                row_seeds = {
                    key: value[i, :count] if torch.is_tensor(value) else value for key, value in seeds.items()
                }
                self._write(layer, free_slots[i, :count], grown[i, :count], row_seeds)
                changed.append(layer)
        self._sort_layers(changed)
        for name, layer in zip(names, layers, strict=True):
            check_same_on_all_ranks(layer.indices, f"the indices of {name}", self.group)
            if name in self.references:
                self.references[name] = layer.values.detach().clone()
        return True

    @torch.no_grad()
    def _reselect_global(self) -> None:
        """Drop the weakest entries of all matrices together and grow the best offers of all matrices together
        (see ``global_budget``): the total stays, each matrix's count moves."""
        n = self.schedule.num_to_replace(sum(layer.k for layer in self.layers.values()), self.t)
        if n == 0:
            return
        drop_scores = {}
        for name, layer in self.layers.items():
            reference = self.references.get(name)
            drop_scores[name] = (
                layer.values.detach().float() - (0 if reference is None else reference.float())
            ).abs()
        dropped_slots = global_drop(drop_scores, n)
        offers = {}
        for name, layer in self.layers.items():
            keep = torch.ones(layer.k, dtype=torch.bool, device=layer.indices.device)
            keep[dropped_slots[name]] = False
            offers[name] = self.rule.scored_growth(name, n, layer.indices[keep].long(), layer.indices, self.t)
        n = sum(slots.numel() for slots in dropped_slots.values())  # each matrix keeps its strongest entry
        taken = global_growth_mask({name: scores for name, (_, scores, _) in offers.items()}, n)
        plans = {}  # name -> (slots leaving, fresh positions, their seeds)
        for name, layer in self.layers.items():
            positions, _, seeds = offers[name]
            grown_all = positions[taken[name]]
            dropped = layer.indices[dropped_slots[name]].long()
            # A position both dropped and grown stays where it is, with its value and optimizer state.
            leaving = dropped_slots[name][~isin_sorted(dropped, grown_all.sort().values)]
            fresh = ~isin_sorted(grown_all, dropped.sort().values)
            seeds = {
                key: value[taken[name]][fresh] if torch.is_tensor(value) else value
                for key, value in seeds.items()
            }
            plans[name] = (leaving, grown_all[fresh], seeds)
        self._balance(plans, drop_scores)
        for name, (leaving, grown, seeds) in plans.items():
            layer = self.layers[name]
            if leaving.numel() == 0 and grown.numel() == 0:
                continue
            if grown.numel():
                self.rule.before_write(layer, seeds, self.t)
            keep = torch.ones(layer.k, dtype=torch.bool, device=leaving.device)
            keep[leaving] = False
            resize_layer(layer, self.optimizer, keep.nonzero().view(-1), grown, seeds, self.t)
            if name in self.references:
                self.references[name] = layer.values.detach().clone()

    @staticmethod
    def _balance(plans: dict, drop_scores: dict) -> None:
        """Where fewer positions grow than leave (rules offered too few), the strongest leaving entries stay,
        so that the total is unchanged."""
        surplus = sum(p[0].numel() for p in plans.values()) - sum(p[1].numel() for p in plans.values())
        if surplus <= 0:
            return
        names = list(plans)
        scores = torch.cat([drop_scores[name][plans[name][0]].float().cpu() for name in names])
        owner = torch.cat([torch.full((plans[name][0].numel(),), i) for i, name in enumerate(names)])
        position = torch.cat([torch.arange(plans[name][0].numel()) for name in names])
        back = order_by(scores, descending=True)[:surplus]
        for i, name in enumerate(names):
            leaving, grown, seeds = plans[name]
            stays = torch.zeros(leaving.numel(), dtype=torch.bool)
            stays[position[back[owner[back] == i]]] = True
            plans[name] = (leaving[~stays.to(leaving.device)], grown, seeds)

    def _sort_layers(self, layers: list[SparseDeltaLinear]) -> None:
        """Re-sort each layer's indices, its values, growth steps, gradient and optimizer state with them (the
        layers' indices sorted together when they have one shape and length)."""
        if not layers:
            return
        if len({(layer.k, layer.out_features, layer.in_features) for layer in layers}) == 1:
            numel = layers[0].out_features * layers[0].in_features
            perms = sort_rows(torch.stack([layer.indices for layer in layers]), numel)[1]
        else:
            perms = [torch.sort(layer.indices, stable=True).indices for layer in layers]
        for layer, perm in zip(layers, perms, strict=True):  # index_select: t[perm], faster on CPU
            layer.indices.copy_(layer.indices.index_select(0, perm))
            layer.values.copy_(layer.values.index_select(0, perm))
            layer.grown_at.copy_(layer.grown_at.index_select(0, perm))
            if layer.values.grad is not None:
                layer.values.grad.copy_(layer.values.grad.index_select(0, perm))
            self.optimizer.permute_slots(layer.values, perm)

    # -- resume --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "t": self.t,
            "method": self.method,
            "growth": self.growth,
            "budget": self.budget,
            "schedule": vars(self.schedule).copy(),
            "phases": self.rule.state_dict(),
            "references": dict(self.references),
            "grown_at": self._grown_at_digest(),
        }

    def _grown_at_digest(self) -> dict:
        # the model's growth steps this state belongs to: AG's Adam ages derive from them
        return {n: (int(layer.grown_at.sum()), int(layer.grown_at.max())) for n, layer in self.layers.items()}

    def load_state_dict(self, state: dict) -> None:
        # states saved before growth rules and budgets existed: the paper's rule, per matrix
        growth, budget = state.get("growth", "paper"), state.get("budget", "per_matrix")
        if (state["method"], growth, budget) != (self.method, self.growth, self.budget) or state[
            "schedule"
        ] != vars(self.schedule):
            raise ValueError(
                f"selector state is for method={state['method']} growth={growth} budget={budget} "
                f"{state['schedule']}, this selector is method={self.method} growth={self.growth} "
                f"budget={self.budget} {vars(self.schedule)}"
            )
        if set(state["phases"]) != set(self.layers):
            raise ValueError("selector state names different modules than this model")
        digest = self._grown_at_digest()
        differ = [n for n, d in state.get("grown_at", {}).items() if tuple(d) != digest[n]]
        if differ and not any(
            top for _, top in digest.values()
        ):  # no entry grown: a compact (inference) checkpoint has no grown_at
            raise ValueError(
                f"the model's grown_at (the step each entry was grown at) is not the one this selector state was "
                f"saved with ({len(differ)} module(s), e.g. {differ[0]}); resume from a training checkpoint "
                "(save_pretrained(..., compact=False), as spiel-train's checkpoint-N/), not a compact final one"
            )
        if differ:
            raise ValueError(
                f"this selector state belongs to another delta: the growth steps it was saved with differ from the "
                f"model's in {len(differ)} module(s), e.g. {differ[0]} (a selector.pt from another run or another "
                "checkpoint?); resume with the selector state saved next to this delta, in the same checkpoint-N/"
            )
        self.t = int(state["t"])
        self.rule.load_state_dict(state["phases"])
        self.references = {n: r.clone() for n, r in state["references"].items()}
        self.rule.prepare(self.t)
