"""How concentrated a sparse delta's support is: the share of a matrix's entries in its busiest 10% of
rows (output neurons) and of columns (input features), and the share of MLP neurons that hold no entry
at all (neuron i of a block: row i of gate_proj and up_proj, column i of down_proj).

A uniformly random support puts about 10% + a little of its entries in the top 10% of rows; the paper's
growth rule, ranking raw gradients across rows whose gradient norms differ several-fold, puts most of
them there. Reported beside the quality scores of ``scripts/bench_quality.py``.
"""

from __future__ import annotations

import re
import statistics

import torch

from spiel.delta.indices import rows_cols

TOP_SHARE = 0.10
MLP_ROWS = ("gate_proj", "up_proj")  # neuron = output row
MLP_COLS = ("down_proj",)  # neuron = input column


def top_share(counts: torch.Tensor, share: float = TOP_SHARE) -> float:
    """Fraction of all entries held by the ``share`` busiest of ``counts``' bins (at least one bin)."""
    total = int(counts.sum())
    if total == 0:
        return 0.0
    top = max(1, round(share * counts.numel()))
    return float(counts.float().topk(top).values.sum()) / total


def _projection(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _block(name: str) -> str:
    match = re.search(r"layers\.(\d+)\.", name)
    return match.group(1) if match else name


def support_concentration(deltas: dict) -> dict:
    """``{"rows": {proj: mean top-10% row share}, "cols": {...}, "dead_neurons": share}`` over the
    ``SparseDeltaLinear`` layers in ``deltas`` (name → layer); per projection type the mean over blocks."""
    rows: dict[str, list[float]] = {}
    cols: dict[str, list[float]] = {}
    neuron_hits: dict[str, torch.Tensor] = {}
    for name, layer in deltas.items():
        out_f, in_f = layer.dense_shape
        r, c = rows_cols(layer.indices.long(), in_f)
        row_counts = torch.bincount(r, minlength=out_f)
        col_counts = torch.bincount(c, minlength=in_f)
        proj = _projection(name)
        rows.setdefault(proj, []).append(top_share(row_counts))
        cols.setdefault(proj, []).append(top_share(col_counts))
        counts = row_counts if proj in MLP_ROWS else col_counts if proj in MLP_COLS else None
        if counts is not None:
            block = _block(name)
            neuron_hits[block] = neuron_hits.get(block, torch.zeros_like(counts)) + counts
    dead = [float((hits == 0).float().mean()) for hits in neuron_hits.values()]
    return {"rows": {p: statistics.fmean(v) for p, v in rows.items()},
            "cols": {p: statistics.fmean(v) for p, v in cols.items()},
            "dead_neurons": statistics.fmean(dead) if dead else None}
