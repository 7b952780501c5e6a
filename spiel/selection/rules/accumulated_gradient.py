"""SpIEL-AG's growth: gradients accumulated at candidate positions over an estimation phase, and its variants.

Paper rule (``paper``): at each phase start the ``k`` largest ``|g|`` of the first micro-batch's dense
gradient (under data parallelism, its mean over ranks: the global gradient) become the candidates; over the
phase's γ steps the step gradients at the candidates are summed (and squared); at the reselection the best
candidates by ``|mean gradient|`` not staying active are grown, their Adam moments seeded with the phase's
mean and mean square.

Variants that keep the support spread (the paper's rule ranks raw ``|g|`` across rows whose gradient norms
differ several-fold, so most of the budget lands in a few rows):

* ``normalized``: candidates and growth ranked by ``|g| · rms(g) / (rms(row) · rms(col))``, with the row and
  column RMS of the phase's first dense gradient;
* ``capped``: candidates and growth under a per-row and per-column cap (``growth_cap`` times the mean
  entries per row / column, counting the entries that stay);
* ``explore``: a share of each growth (``explore_share``) drawn uniformly at random from the
  inactive positions; those start with zero moments at age 0 (a fresh Adam state), the rest as the paper's.

The Adam state of the entries grown from the statistics (``adam_seeding``), with ``s`` the
phase's step count, ``ḡ`` / ``q`` the mean step gradient / mean squared step gradient:

* ``full``: ``m = ḡ·(1 − β1^s)``, ``v = q·(1 − β2^s)``, age ``s``: the bias correction gives back ``ḡ`` and ``q``;
* ``released``: what the paper's released code seeded at the paper's scale (``RELEASED_ACCUMULATION`` = 128
  micro-batches per step, the loss divided by 128; a bf16 sample counter, which stops at
  ``RELEASED_COUNTER_LIMIT`` = 256). It summed the micro-batch gradients (each carrying 1/128) and their
  squares, divided both by the counter, and took ``age = counter / 128``. With each micro-batch gradient
  taken as its step's gradient: ``c = min(128·s, 256)``, ``age = c / 128`` (2 from s = 2 on),
  ``m = s·ḡ / c · (1 − β1^age)``, ``v = s·q / (128·c) · (1 − β2^age)``: about ``ḡ/50`` and ``q/6500``
  at γ = 5, close to a fresh state. (Its bf16 sums, which also stop growing, are not modelled.)
* ``none``: zero moments at age 0, the state torch.optim.AdamW gives a new parameter.
"""

from __future__ import annotations

import torch

from spiel.delta.indices import rows_cols
from spiel.selection.batched import ag_grow_order_rows
from spiel.selection.distributed import all_reduce_mean_, global_block_grad, global_mean, world_size
from spiel.selection.grow import (
    admit_under_caps,
    ag_grow_order,
    capped_top_candidates,
    line_caps,
    normalization_factors,
    random_inactive,
    streamed_top_candidates,
    top_candidates,
)
from spiel.selection.rules.adam_ages import keep_ages_exact, link_ages
from spiel.selection.rules.base import GrowthRule, growth_generator

RELEASED_ACCUMULATION = 128  # the paper's runs: micro-batch 1 × 128 accumulation steps
RELEASED_COUNTER_LIMIT = 256  # a bf16 counter: 256 + 1 rounds to 256

PHASE_KEYS = ("candidates", "step_grad", "grad_sum", "grad_sq_sum", "scale")


class Phase:
    """One layer's estimation statistics at its growth candidates (all fp32)."""

    def __init__(self):
        self.candidates = (
            None  # sorted flat positions [K] (the layer's index dtype), from the first micro-batch
        )
        self.scale = None  # (normalized) each candidate's score factor, from the same gradient
        self.step_grad = None  # sum of this optimizer step's micro-batch gradients
        self.grad_sum = None  # sum over completed steps of the step gradient
        self.grad_sq_sum = None  # ... and of its square
        self.steps = 0


class AccumulatedGradient(GrowthRule):
    """The paper's SpIEL-AG growth (see the module docstring). Paired with SparseAdamW."""

    estimates_gradients = True

    def __init__(self, layers, optimizer, schedule, config, seed, process_group=None):
        super().__init__(layers, optimizer, schedule, config, seed, process_group)
        self.phases = {name: Phase() for name in layers}
        # Adam ages derived from grown_at (no per-slot age counter): every grown slot is seeded with the
        # age of the phase's step count, γ.
        self.head_start = self.seed_age(schedule.estimation_steps)
        link_ages(optimizer, layers, self.head_start)

    def seed_age(self, steps: int) -> int:
        """The Adam age a grown entry starts at after a phase of ``steps`` steps (module docstring)."""
        seeding = self.config.adam_seeding
        if seeding == "none":
            return 0
        if seeding == "released":
            return min(steps * RELEASED_ACCUMULATION, RELEASED_COUNTER_LIMIT) // RELEASED_ACCUMULATION
        return steps

    # -- what the variants change ------------------------------------------------------------------------
    def candidates(self, layer, dense_grad: torch.Tensor):
        """(sorted candidate positions, per-candidate score factor or None) from the first dense gradient."""
        return top_candidates(dense_grad, layer.k), None

    def scores(self, phase: Phase, mean: torch.Tensor) -> torch.Tensor:
        """Each candidate's growth score from its mean step gradient (higher grows first)."""
        return mean.abs()

    def order(self, layer, phase: Phase, scores: torch.Tensor, staying: torch.Tensor, n: int) -> torch.Tensor:
        """Positions (into the candidates) of the ``n`` best candidates not in ``staying``, best first."""
        return ag_grow_order(phase.candidates, scores, staying, n)

    # -- the estimation phase ----------------------------------------------------------------------------
    def prepare(self, t: int) -> None:
        """Make the layers' probes match the state: request the first micro-batch's dense gradient at a phase
        start, keep gathering at the candidates during a phase, nothing otherwise."""
        for name, layer in self.layers.items():
            layer.clear_probes()
            if not self.schedule.in_estimation_phase(t):
                continue
            phase = self.phases[name]
            if phase.candidates is None and self.streams_candidates:
                layer.request_grad_blocks(self._on_first_grad_blocks(name))
            elif phase.candidates is None:
                layer.request_dense_grad(self._on_first_dense_grad(name))
            else:
                layer.set_candidate_probe(phase.candidates, self._on_candidate_grad(name))

    def _on_first_dense_grad(self, name):
        def callback(dense_grad: torch.Tensor) -> None:
            layer, phase = self.layers[name], self.phases[name]
            # candidates from the global gradient (every rank gets the same); the step statistics stay local
            # until after_step averages them
            chosen_from = global_mean(dense_grad, self.group) if world_size(self.group) > 1 else dense_grad
            candidates, phase.scale = self.candidates(layer, chosen_from)
            phase.step_grad = dense_grad.reshape(-1)[candidates].float()
            # in the index dtype: the probe takes this very tensor, no second copy (int32: half of int64's bytes)
            phase.candidates = candidates.to(layer.indices.dtype)
            layer.set_candidate_probe(phase.candidates, self._on_candidate_grad(name))

        return callback

    #: candidates are the top ``|g|`` alone, so they can be found block by block (no dense gradient held)
    streams_candidates = True

    def _on_first_grad_blocks(self, name):
        def callback(block_grad, rows_per_block: int) -> None:
            layer, phase = self.layers[name], self.phases[name]
            if (
                world_size(self.group) > 1
            ):  # each block averaged over ranks: candidates from the global gradient
                block_grad = global_block_grad(block_grad, self.group)
            if rows_per_block >= layer.out_features:  # the dense gradient exists anyway: the cheaper search
                dense = block_grad(0, layer.out_features)
                candidates = top_candidates(dense, layer.k)
                phase.step_grad = dense.reshape(-1)[candidates].float()
            else:
                candidates, phase.step_grad = streamed_top_candidates(
                    block_grad, layer.out_features, layer.in_features, layer.k, rows_per_block
                )
            phase.candidates = candidates.to(layer.indices.dtype)
            layer.set_candidate_probe(phase.candidates, self._on_candidate_grad(name))

        return callback

    def _on_candidate_grad(self, name):
        def callback(grad: torch.Tensor) -> None:
            self.phases[name].step_grad += grad

        return callback

    def after_step(self, t: int) -> None:
        for phase in self.phases.values():
            if phase.candidates is None:
                continue
            step_grad = all_reduce_mean_(phase.step_grad, self.group)
            if phase.grad_sum is None:
                phase.grad_sum = torch.zeros_like(step_grad)
                phase.grad_sq_sum = torch.zeros_like(step_grad)
            phase.grad_sum += step_grad
            phase.grad_sq_sum += step_grad * step_grad
            phase.steps += 1
            step_grad.zero_()

    def end_period(self) -> None:
        self.phases = {name: Phase() for name in self.layers}

    def close(self) -> None:
        for layer in self.layers.values():
            layer.clear_probes()

    # -- growth --------------------------------------------------------------------------------------------
    comparable_scores = (
        True  # budget="global": |mean gradient| is comparable across matrices (see global_budget)
    )

    def grow(self, name, n, staying, active, t):
        positions, _, seeds = self.scored_growth(name, n, staying, active, t)
        return positions, seeds

    #: whether grow_rows may grow several layers at once (not where ``order`` or ``grow`` is per layer)
    batched_growth = True

    def grow_rows(self, names, n, staying, active, t):
        phases = [self.phases[name] for name in names]
        if not self.batched_growth or any(p.candidates is None or p.steps == 0 for p in phases):
            return None
        betas = {tuple(self.optimizer.group_of(self.layers[name].values)["betas"]) for name in names}
        if (
            len({p.steps for p in phases}) > 1
            or len({p.candidates.numel() for p in phases}) > 1
            or len(betas) > 1
        ):
            return None
        steps = phases[0].steps
        stacked = Phase()
        stacked.candidates = torch.stack([p.candidates.long() for p in phases])
        if phases[0].scale is not None:
            stacked.scale = torch.stack([p.scale for p in phases])
        mean = torch.stack([p.grad_sum for p in phases]) / steps
        mean_sq = torch.stack([p.grad_sq_sum for p in phases]) / steps
        chosen, valid = ag_grow_order_rows(stacked.candidates, self.scores(stacked, mean), staying, n)
        seeds = self._adam_seeds(
            self.layers[names[0]], mean.gather(1, chosen), mean_sq.gather(1, chosen), steps
        )
        return stacked.candidates.gather(1, chosen), valid, seeds

    def scored_growth(self, name, n, staying, active, t):
        """As :meth:`grow`, with each position's score as a third element."""
        layer, phase = self.layers[name], self.phases[name]
        if phase.candidates is None or phase.steps == 0:
            return active[:0].long(), active[:0].float(), {}
        mean = phase.grad_sum / phase.steps
        mean_sq = phase.grad_sq_sum / phase.steps
        scores = self.scores(phase, mean)
        chosen = self.order(layer, phase, scores, staying, n)
        return (
            phase.candidates[chosen],
            scores[chosen],
            self._adam_seeds(layer, mean[chosen], mean_sq[chosen], phase.steps),
        )

    def _adam_seeds(self, layer, mean, mean_sq, steps: int) -> dict:
        # The phase statistics, pre-multiplied by (1 − β^age) so that Adam's bias correction at this age
        # gives back the estimates (for "released", the estimates as its code computed them).
        age = self.seed_age(steps)
        if age == 0:
            return {"exp_avg": torch.zeros_like(mean), "exp_avg_sq": torch.zeros_like(mean_sq), "age": 0}
        if self.config.adam_seeding == "released":
            count = min(steps * RELEASED_ACCUMULATION, RELEASED_COUNTER_LIMIT)
            mean = mean * (steps / count)
            mean_sq = mean_sq * (steps / (RELEASED_ACCUMULATION * count))
        beta1, beta2 = self.optimizer.group_of(layer.values)["betas"]
        return {"exp_avg": mean * (1 - beta1**age), "exp_avg_sq": mean_sq * (1 - beta2**age), "age": age}

    def before_write(self, layer, seeds, t):
        keep_ages_exact(self.optimizer, layer, seeds["age"], t)

    # -- resume --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, dict]:
        phases = {}
        for name, phase in self.phases.items():
            entry = {key: getattr(phase, key) for key in PHASE_KEYS if getattr(phase, key) is not None}
            entry.update(steps=phase.steps)
            phases[name] = entry
        return phases

    def load_state_dict(self, phases: dict[str, dict]) -> None:
        self.phases = {}
        for name, entry in phases.items():
            phase = Phase()
            for key in PHASE_KEYS:
                if key in entry:
                    setattr(phase, key, entry[key].clone())
            phase.steps = int(entry["steps"])
            self.phases[name] = phase


class NormalizedGradient(AccumulatedGradient):
    """``normalized``: scores ``|g| · rms(g) / (rms(row) · rms(col))`` (factors from the first dense gradient)."""

    streams_candidates = False  # the factors need the whole gradient first

    def candidates(self, layer, dense_grad):
        row_factor, col_factor = normalization_factors(dense_grad)
        candidates = top_candidates(dense_grad, layer.k, row_factor=row_factor, col_factor=col_factor)
        rows, cols = rows_cols(candidates, layer.in_features)
        return candidates, row_factor[rows.long()] * col_factor[cols.long()]

    def scores(self, phase, mean):
        return (mean * phase.scale).abs()


class CappedGradient(AccumulatedGradient):
    """``capped``: the paper's scores, but no row / column past its cap (candidates and the support after growth)."""

    batched_growth = False
    streams_candidates = False

    def candidates(self, layer, dense_grad):
        row_cap, col_cap = line_caps(layer.k, layer.out_features, layer.in_features, self.config.growth_cap)
        return capped_top_candidates(dense_grad, layer.k, row_cap, col_cap), None

    def order(self, layer, phase, scores, staying, n):
        eligible = ag_grow_order(phase.candidates, scores, staying, phase.candidates.numel())
        row_cap, col_cap = line_caps(layer.k, layer.out_features, layer.in_features, self.config.growth_cap)
        rows, cols = rows_cols(staying, layer.in_features)
        row_counts = torch.bincount(rows.long(), minlength=layer.out_features)
        col_counts = torch.bincount(cols.long(), minlength=layer.in_features)
        admitted = admit_under_caps(
            phase.candidates[eligible], layer.in_features, row_counts, col_counts, row_cap, col_cap
        )
        return eligible[admitted][:n]


class ExploringGradient(AccumulatedGradient):
    """``explore``: the paper's growth for most entries, a share drawn at random from the inactive positions."""

    comparable_scores = False  # random draws have no score
    batched_growth = False

    def grow(self, name, n, staying, active, t):
        n_random = int(self.config.explore_share * n)
        best, seeds = super().grow(name, n - n_random, staying, active, t)
        if n_random == 0 or not seeds:  # nothing to explore, or no phase statistics: grow as the paper
            return best, seeds
        layer = self.layers[name]
        excluded = torch.cat([active.long(), best]).unique()
        generator = growth_generator(self.seed, t, list(self.layers).index(name), active.device)
        drawn = random_inactive(excluded, layer.out_features * layer.in_features, n_random, generator)
        zeros = torch.zeros(drawn.numel(), dtype=torch.float32, device=drawn.device)
        ages = torch.cat([torch.full_like(best, seeds["age"]), torch.zeros_like(drawn)])
        return torch.cat([best, drawn]), {
            "exp_avg": torch.cat([seeds["exp_avg"], zeros]),
            "exp_avg_sq": torch.cat([seeds["exp_avg_sq"], zeros]),
            "age": ages,
        }
