"""Where a training step's time goes: a ``torch.profiler`` record of whole steps, broken down by kind of step
(plain, AG's probe and estimation steps, reselection) into what the step spends its time on.

Categories, the first that applies to an operator (by its innermost labelled region, then by its name):

* ``selection`` (the selector's step), ``optimizer`` (the optimizer's step), ``values_grad`` (the gather of
  ``dL/dvalues`` in a SpIEL layer's backward), ``probe`` (AG's growth probe: dense-gradient candidates or
  the gradient at the candidates);
* ``gemm`` (matrix products), ``index_scatter`` (index, gather, scatter, sort-free index passes, e.g. merged
  storage's writes), ``runtime`` (CUDA runtime calls: launches, copies, synchronizations), ``other_ops``;
* ``host``: time inside a step's regions but in no operator (Python, framework overhead).

On CPU the figures are operators' self CPU time; on CUDA the kernels' device time attributed to the operator
that launched them, with ``idle`` = step wall time − busy device time (launch and sync gaps), and the host's
time in ``cudaLaunchKernel`` and in synchronizing calls reported apart (they overlap the device's work).
"""

from __future__ import annotations

import bisect
import json
from collections import defaultdict

STEP_REGION = "## step "
# AG's estimation steps gather the values and the candidates in one pass: its time counts as the probe's.
REGION_CATEGORIES = {
    "## selector": "selection",
    "## optimizer": "optimizer",
    "spiel::values_grad": "values_grad",
    "spiel::probe": "probe",
    "spiel::values_grad+probe": "probe",
}
GEMM_OPS = frozenset(
    {
        "aten::mm",
        "aten::addmm",
        "aten::bmm",
        "aten::baddbmm",
        "aten::addmv",
        "aten::mv",
        "aten::dot",
        "aten::_scaled_mm",
        "aten::sampled_addmm",
        "aten::sparse_sampled_addmm",
    }
)
INDEX_OPS = frozenset(
    {
        "aten::index_select",
        "aten::index_put_",
        "aten::_index_put_impl_",
        "aten::index_add_",
        "aten::index",
        "aten::index_copy_",
        "aten::scatter",
        "aten::scatter_",
        "aten::scatter_add_",
        "aten::scatter_reduce_",
        "aten::gather",
        "aten::take",
        "aten::searchsorted",
        "aten::nonzero",
        "aten::masked_select",
        "aten::masked_fill_",
        "aten::embedding_dense_backward",
        "aten::embedding",
    }
)
SYNC_CALLS = (
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
    "cudaEventSynchronize",
    "cudaMemcpy",
    "cudaMemcpyAsync",
)
CATEGORIES = (
    "gemm",
    "values_grad",
    "probe",
    "index_scatter",
    "optimizer",
    "selection",
    "other_ops",
    "runtime",
    "host",
)


def _is_annotation(name: str) -> bool:
    return name.startswith("## ") or name.startswith("spiel::")


def category(event) -> str:
    """The category of one profiler event (see the module docstring)."""
    node = event
    while node is not None:
        label = REGION_CATEGORIES.get(node.name)
        if label is not None:
            return label
        node = node.cpu_parent
    name = event.name
    if _is_annotation(name):
        return "host"
    if name.startswith("cuda") or name.startswith("cu"):
        return "runtime"
    if name in GEMM_OPS:
        return "gemm"
    if name in INDEX_OPS:
        return "index_scatter"
    return "other_ops"


def breakdown(events, cuda: bool) -> dict:
    """Per kind of step: how many steps, the mean wall time, and the mean time per category (ms per step).

    ``events``: ``profiler.events()`` of a run whose every step is a ``## step <kind>`` region."""
    from torch.autograd import DeviceType

    cpu_events = [e for e in events if e.device_type == DeviceType.CPU]
    steps = sorted(
        (e.time_range.start, e.time_range.end, e.name[len(STEP_REGION) :])
        for e in cpu_events
        if e.name.startswith(STEP_REGION)
    )
    if not steps:
        return {}
    starts = [s for s, _, _ in steps]
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    counts: dict[str, int] = defaultdict(int)
    walls: dict[str, float] = defaultdict(float)
    for start, end, kind in steps:
        counts[kind] += 1
        walls[kind] += end - start
    for event in cpu_events:
        if event.name.startswith(STEP_REGION):
            continue
        i = bisect.bisect_right(starts, event.time_range.start) - 1
        if i < 0 or event.time_range.start > steps[i][1]:
            continue  # outside every step (e.g. the profiler's own setup)
        kind = steps[i][2]
        cat = category(event)
        if cuda:
            totals[kind][cat] += event.self_device_time_total
            if event.name == "cudaLaunchKernel" or event.name.startswith("cudaLaunch"):
                totals[kind]["host_launch"] += event.self_cpu_time_total
            elif event.name.startswith(SYNC_CALLS):
                totals[kind]["host_sync"] += event.self_cpu_time_total
        else:
            totals[kind][cat] += event.self_cpu_time_total
    out = {}
    for kind in sorted(counts):
        n = counts[kind]
        per_step = {cat: totals[kind].get(cat, 0.0) / n / 1e3 for cat in CATEGORIES}
        wall = walls[kind] / n / 1e3
        row = {"steps": n, "wall_ms": wall, "ms": per_step}
        if cuda:
            per_step.pop("host")  # the device time of annotations is nil; what is not busy is idle
            busy = sum(per_step.values())
            per_step["idle"] = max(0.0, wall - busy)
            row["host_launch_ms"] = totals[kind].get("host_launch", 0.0) / n / 1e3
            row["host_sync_ms"] = totals[kind].get("host_sync", 0.0) / n / 1e3
        else:
            per_step["untraced"] = max(0.0, wall - sum(per_step.values()))
        out[kind] = row
    return out


def breakdown_table(by_method: dict[str, dict], unit: str) -> str:
    """A markdown table, one row per (method, kind of step), one column per category (ms per step)."""
    cats = []
    for rows in by_method.values():
        for row in rows.values():
            cats += [c for c in row["ms"] if c not in cats]
    lines = [f"| method | step | n | wall ms | {' | '.join(cats)} |", "|" + "---|" * (len(cats) + 4)]
    for method, rows in by_method.items():
        for kind, row in rows.items():
            cells = " | ".join(f"{row['ms'].get(c, 0.0):.2f}" for c in cats)
            lines.append(f"| {method} | {kind} | {row['steps']} | {row['wall_ms']:.1f} | {cells} |")
    lines.append(f"\n(ms per step of that kind; {unit})")
    return "\n".join(lines)


def write_breakdown(path: str, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
