"""Several named deltas over one frozen base: load, switch, unload (``SpielModel.load_delta`` and friends).

Each ``SparseDeltaLinear`` applies its delta on the fly (with merged storage it keeps ``W + Δ`` in the base
weight between forwards, and the saved base values at its k positions), so a delta is just its (indices,
values, grown_at) per layer: switching points every layer at another set's tensors (O(k) memory per set,
no copy of the base), and the base stays bit-for-bit what it was loaded as (switching restores it first).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from spiel.checkpoint.fingerprint import CheckpointMismatchError, DeltaValueError, check_against_base
from spiel.checkpoint.read import read_checkpoint
from spiel.delta.bounds import delta_value_problem
from spiel.delta.indices import check_indices, index_dtype
from spiel.delta.layer import SparseDeltaLinear
from spiel.spiel_config import SpielConfig


@dataclass
class DeltaSet:
    """One named delta: per module its tensors, already on the layer's device and in its index dtype."""

    source: str
    config: SpielConfig
    tensors: dict[str, dict[str, torch.Tensor]]


def capture(layers: dict[str, SparseDeltaLinear], source: str, config: SpielConfig) -> DeltaSet:
    """The layers' current tensors (the same storage, not a copy) as a set."""
    return DeltaSet(
        source,
        config,
        {
            n: {"indices": layer.indices, "values": layer.values, "grown_at": layer.grown_at}
            for n, layer in layers.items()
        },
    )


def check_unmerged(layers: dict[str, SparseDeltaLinear], action: str) -> None:
    merged = [n for n, layer in layers.items() if layer.merged]
    if merged:
        raise RuntimeError(
            f"cannot {action}: {len(merged)} layer(s) have their delta merged into the base "
            f"weight (e.g. {merged[0]}), so the base is no longer pristine; call unmerge() on them "
            "first, or reload the base"
        )


@torch.no_grad()
def read_delta_set(
    layers: dict[str, SparseDeltaLinear],
    model: nn.Module,
    path_or_repo,
    revision: str | None = None,
    allow_unverified_base: bool = False,
    allow_unverified_delta: bool = False,
) -> DeltaSet:
    """A checkpoint (directory or Hub repo id) as a set for ``layers``, checked as ``from_pretrained`` checks
    it (files, then against the base weights) before anything is kept."""
    from spiel.io.hub import resolve_checkpoint

    directory = resolve_checkpoint(path_or_repo, revision)
    saved, tensors = read_checkpoint(
        directory, allow_unverified_base=allow_unverified_base, allow_unverified_delta=allow_unverified_delta
    )
    check_against_base(directory, saved, model)
    if set(tensors) != set(layers):
        raise CheckpointMismatchError(
            f"{directory} holds deltas for other modules than this SpielModel wraps: it adds "
            f"{sorted(set(tensors) - set(layers))[:3]} and lacks {sorted(set(layers) - set(tensors))[:3]}; "
            "named deltas must target the same modules"
        )
    config = SpielConfig.from_dict(saved["spiel_config"])
    config.num_deltas = {n: int(m["k"]) for n, m in saved["modules"].items()}
    dtype = getattr(torch, config.delta_dtype)
    kept = {}
    for name, layer in layers.items():
        entry, device = tensors[name], layer.indices.device
        numel = layer.out_features * layer.in_features
        indices = entry["indices"].to(device=device, dtype=index_dtype(numel))
        try:  # this reader's own check: the set is kept for later forwards, long after reading
            check_indices(indices, numel, f"{name}.indices")
        except ValueError as e:
            raise CheckpointMismatchError(f"{directory}: {e}") from None
        if entry["values"].shape != indices.shape:
            raise CheckpointMismatchError(
                f"{directory}: {name} has {entry['values'].numel()} values for {indices.numel()} indices"
            )
        grown_at = entry.get("grown_at", torch.zeros(indices.numel(), dtype=torch.int32))
        kept[name] = {
            "indices": indices,
            "values": nn.Parameter(entry["values"].to(device=device, dtype=dtype), requires_grad=False),
            "grown_at": grown_at.to(device=device, dtype=torch.int32),
        }
    return DeltaSet(str(directory), config, kept)


def activate(layers: dict[str, SparseDeltaLinear], delta: DeltaSet) -> None:
    """Point every layer at ``delta``'s tensors (no copy: the set and the layer share storage). A set left
    behind when the model moved (``model.to(device)`` moves only the active one) follows it first."""
    check_unmerged(layers, "switch deltas")
    for name, layer in layers.items():
        layer.restore_base()
        entry, device = delta.tensors[name], layer.values.device
        if any(t.device != device for t in entry.values()):
            entry = delta.tensors[name] = {
                "indices": entry["indices"].to(device),
                "grown_at": entry["grown_at"].to(device),
                "values": nn.Parameter(entry["values"].detach().to(device), requires_grad=False),
            }
        layer.indices = entry["indices"]  # registered buffers and parameter: plain reassignment
        layer.values = entry["values"]
        layer.grown_at = entry["grown_at"]


def weighted_sum(
    members: list[dict[str, dict[str, torch.Tensor]]], weights: list[float]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per module, the union of the members' positions (sorted, int64) and ``Σ wᵢ valuesᵢ`` there (fp32).
    The result is checked (finite weights can still overflow, or sum past what a delta can be)."""
    summed: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for tensors, weight in zip(members, weights, strict=True):
        for name, entry in tensors.items():
            idx, val = entry["indices"].long(), entry["values"].detach().float() * weight
            if name in summed:
                idx, val = torch.cat([summed[name][0], idx]), torch.cat([summed[name][1], val])
            union, inverse = torch.unique(idx, return_inverse=True)
            summed[name] = (union, torch.zeros(union.numel(), device=val.device).index_add_(0, inverse, val))
    for name, (_, val) in summed.items():
        problem = delta_value_problem(val)
        if problem:
            raise DeltaValueError(
                f"the weighted sum with weights {weights} has, in {name}, {problem}; choose smaller weights"
            )
    return summed


def as_set(
    layers: dict[str, SparseDeltaLinear], summed: dict[str, tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, dict[str, torch.Tensor]]:
    """``weighted_sum``'s result as a set's tensors for ``layers`` (their device and index dtype)."""
    out = {}
    for name, (idx, val) in summed.items():
        layer = layers[name]
        device = layer.values.device
        out[name] = {
            "indices": idx.to(device=device, dtype=index_dtype(layer.out_features * layer.in_features)),
            "values": nn.Parameter(val.to(device), requires_grad=False),
            "grown_at": torch.zeros(idx.numel(), dtype=torch.int32, device=device),
        }
    return out
