"""The support's concentration as the quality table reports it, per projection type: the mean over blocks
of the share of a matrix's entries in its busiest 10% of rows (output neurons) and of columns (input
features), from :func:`spiel.selection.concentration.support_concentration`; and the share of MLP neurons
that hold no entry at all (neuron i of a block: row i of gate_proj and up_proj, column i of down_proj).
"""

from __future__ import annotations

import re
import statistics

import torch

from spiel.delta.indices import rows_cols
from spiel.selection.concentration import support_concentration

MLP_ROWS = ("gate_proj", "up_proj")  # neuron = output row
MLP_COLS = ("down_proj",)  # neuron = input column


def _block(name: str) -> str:
    match = re.search(r"layers\.(\d+)\.", name)
    return match.group(1) if match else name


def concentration_by_projection(deltas: dict) -> dict:
    """``{"rows": {proj: mean top-10% row share}, "cols": {...}, "dead_neurons": share}`` over the
    ``SparseDeltaLinear`` layers in ``deltas`` (name → layer)."""
    rows: dict[str, list[float]] = {}
    cols: dict[str, list[float]] = {}
    neuron_hits: dict[str, torch.Tensor] = {}
    for name, layer in deltas.items():
        out_f, in_f = layer.dense_shape
        report = support_concentration(layer.indices, out_f, in_f)
        proj = name.rsplit(".", 1)[-1]
        rows.setdefault(proj, []).append(report["top10_rows_share"])
        cols.setdefault(proj, []).append(report["top10_cols_share"])
        if proj in MLP_ROWS + MLP_COLS:
            r, c = rows_cols(layer.indices.long(), in_f)
            hits = (
                torch.bincount(r, minlength=out_f) if proj in MLP_ROWS else torch.bincount(c, minlength=in_f)
            )
            block = _block(name)
            neuron_hits[block] = neuron_hits.get(block, torch.zeros_like(hits)) + hits
    dead = [float((hits == 0).float().mean()) for hits in neuron_hits.values()]
    return {
        "rows": {p: statistics.fmean(v) for p, v in rows.items()},
        "cols": {p: statistics.fmean(v) for p, v in cols.items()},
        "dead_neurons": statistics.fmean(dead) if dead else None,
    }
