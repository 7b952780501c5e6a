"""How concentrated a sparse support is, and how a budget is shared among matrices.

SpIEL's paper rule ranks raw gradients across rows whose gradient norms differ several-fold, so its support
can gather in a few rows and columns while most neurons get no entry; these reports measure that, per matrix,
and the share of the total budget each matrix, layer and projection type holds."""

from __future__ import annotations

import math
import re
from collections import defaultdict

import torch

TOP_SHARE = 0.1  # "the top 10% of rows / columns"


def support_concentration(indices: torch.Tensor, out_features: int, in_features: int) -> dict[str, float]:
    """For one matrix's flat positions: the share of entries in the 10% of rows (columns) holding most
    entries, and the share of rows (columns) with no entry."""
    positions = indices.long()
    k = positions.numel()
    rows = torch.div(positions, in_features, rounding_mode="floor")
    report = {}
    for axis, lines, size in (
        ("rows", rows, out_features),
        ("cols", positions - rows * in_features, in_features),
    ):
        counts = torch.bincount(lines, minlength=size)
        top = max(1, math.ceil(TOP_SHARE * size))
        report[f"top10_{axis}_share"] = float(counts.topk(top).values.sum()) / k if k else 0.0
        report[f"empty_{axis}_share"] = float((counts == 0).sum()) / size
    return report


def model_concentration(layers: dict) -> dict[str, dict[str, float]]:
    """:func:`support_concentration` of every sparse-delta layer (``{name: SparseDeltaLinear}``, e.g.
    ``spiel_model.deltas``), plus ``"mean"``: the unweighted mean of each figure over the layers."""
    report = {
        name: support_concentration(layer.indices, layer.out_features, layer.in_features)
        for name, layer in layers.items()
    }
    if report:
        keys = next(iter(report.values()))
        report["mean"] = {key: sum(r[key] for r in report.values()) / len(report) for key in keys}
    return report


_LAYER_NUMBER = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def budget_shares(layers: dict) -> dict[str, dict[str, float]]:
    """The share of all tunable entries each matrix holds (``by_module``), summed per block (``by_layer``:
    the first number in the module name) and per projection type (``by_projection``: the name's last part)."""
    total = sum(layer.k for layer in layers.values())
    shares = {"by_module": {}, "by_layer": defaultdict(float), "by_projection": defaultdict(float)}
    for name, layer in layers.items():
        share = layer.k / total if total else 0.0
        shares["by_module"][name] = share
        number = _LAYER_NUMBER.search(name)
        shares["by_layer"][number.group(1) if number else name] += share
        shares["by_projection"][name.rsplit(".", 1)[-1]] += share
    return {key: dict(value) for key, value in shares.items()}
