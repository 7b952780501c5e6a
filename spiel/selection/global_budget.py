"""budget="global": drop and growth compete across all target matrices, so the total number of entries stays
fixed while each matrix's share moves (the paper's future work, "adaptive redistribution of tunable
parameters across parameter tensors").

Why the scores compare across matrices:

* drop ranks ``|value|`` (or ``|value − value at the last reselection|``): every entry is moved by SparseAdamW,
  whose per-entry step is about ``lr`` whatever the gradient's scale, so a value's size counts Adam steps in
  one unit in every matrix;
* growth ranks the rule's score: for ``paper`` the mean gradient ``|ĝ|``, which is the first-order decrease
  of the loss per unit of movement, and growing an entry buys about ``lr`` of movement per step in any matrix
  (Adam again), so ``|ĝ|`` is "loss decrease per step" in one unit everywhere; ``normalized`` and ``capped``
  give up that meaning for spread (normalized scores are relative to their matrix's RMS gradient).

A matrix never loses its strongest entry (no matrix empties). The values, index and growth-step tensors
change size in place (same tensor objects: the optimizer's references and SparseAdamW's age links hold), and
the optimizer's per-slot state follows. Not with data parallelism: DDP's gradient buckets have fixed sizes.
"""

from __future__ import annotations

import torch

from spiel.selection.order import order_by


def global_drop(scores: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """Per matrix, the slots among the ``n`` lowest ``scores`` over all matrices (weakest first); each
    matrix's highest-scoring slot is never taken. Ties go to the earlier matrix, then the lower slot."""
    names = list(scores)
    flat = []
    for name in names:
        s = scores[name].detach().float().clone()
        if s.numel():
            s[int(torch.argmax(s))] = torch.inf
        flat.append(s)
    owner = torch.cat([torch.full((s.numel(),), i, dtype=torch.long) for i, s in enumerate(flat)])
    slot = torch.cat([torch.arange(s.numel()) for s in flat])
    order = order_by(torch.cat(flat).cpu())
    finite = int(torch.isfinite(torch.cat(flat)).sum())
    chosen = order[: min(n, finite)]
    return {name: slot[chosen[owner[chosen] == i]].to(scores[name].device) for i, name in enumerate(names)}


def global_growth_mask(scores: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """Per matrix, which of its offered positions (scored ``scores``) are among the ``n`` best of all."""
    names = list(scores)
    lengths = [scores[name].numel() for name in names]
    all_scores = torch.cat([scores[name].float().cpu() for name in names]) if names else torch.zeros(0)
    taken = torch.zeros(all_scores.numel(), dtype=torch.bool)
    taken[order_by(all_scores, descending=True)[:n]] = True
    return {
        name: part.to(scores[name].device) for name, part in zip(names, taken.split(lengths), strict=True)
    }


def _set_parameter_data(param: torch.nn.Parameter, data: torch.Tensor) -> None:
    """``param.data = data`` for a ``data`` of another size. A parameter's gradient accumulator (kept while any
    graph through it lives, e.g. the last step's ``loss``) remembers its shape, and torch drops it only on a
    change of dtype or device: passing through another dtype makes the next graph build one of the new size."""
    param.data = torch.empty(
        0, dtype=torch.float64 if data.dtype != torch.float64 else torch.float32, device=data.device
    )
    param.data = data


@torch.no_grad()
def resize_entries(layer, k: int) -> None:
    """Give ``layer`` ``k`` zeroed entries (same tensor objects), to load a saved delta of that size into."""
    if k != layer.k:
        layer.indices.data = layer.indices.new_zeros(k)
        _set_parameter_data(layer.values, layer.values.new_zeros(k))
        layer.grown_at.data = layer.grown_at.new_zeros(k)


@torch.no_grad()
def resize_layer(layer, optimizer, keep: torch.Tensor, grown: torch.Tensor, seeds: dict, t: int) -> None:
    """``layer``'s entries become its ``keep`` slots followed by the ``grown`` positions (value 0, grown at
    ``t``, optimizer state from ``seeds``), then sorted by position. Tensors change size in place."""
    k_new = keep.numel() + grown.numel()
    indices = torch.cat([layer.indices[keep], grown.to(layer.indices.dtype)])
    values = torch.cat([layer.values[keep], layer.values.new_zeros(grown.numel())])
    grown_at = torch.cat([layer.grown_at[keep], layer.grown_at.new_full((grown.numel(),), t)])
    perm = torch.sort(indices, stable=True).indices
    layer.indices.data = indices[perm]
    _set_parameter_data(layer.values, values[perm])
    layer.grown_at.data = grown_at[perm]
    if layer.values.grad is not None:
        layer.values.grad = None  # the step's gradient is spent; the next backward makes one of the new size
    optimizer.resize_slots(layer.values, keep, grown.numel())
    if grown.numel():
        optimizer.reset_slots(layer.values, torch.arange(keep.numel(), k_new, device=keep.device), **seeds)
    optimizer.permute_slots(layer.values, perm)
