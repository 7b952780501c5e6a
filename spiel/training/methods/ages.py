"""Parameter ages for SpIEL (the paper's Figure 2): for every tunable index, the optimizer step at which
it was last grown (0: one of the initial random indices, never replaced). Written as JSON and plotted as
the proportion of indices per growth step."""

from __future__ import annotations

import json
from pathlib import Path

import torch

AGES_JSON = "param_ages.json"
AGES_PNG = "param_ages.png"


def age_histogram(model) -> dict:
    per_module: dict[str, dict[int, int]] = {}
    overall: dict[int, int] = {}
    for name, layer in model.deltas.items():
        steps, counts = torch.unique(layer.grown_at.detach().cpu(), return_counts=True)
        kind = name.rsplit(".", 1)[-1]
        bucket = per_module.setdefault(kind, {})
        for s, c in zip(steps.tolist(), counts.tolist(), strict=True):
            bucket[s] = bucket.get(s, 0) + c
            overall[s] = overall.get(s, 0) + c
    return {
        "overall": dict(sorted(overall.items())),
        "by_module": {k: dict(sorted(v.items())) for k, v in sorted(per_module.items())},
    }


def write_age_report(model, run_dir: Path, total_steps: int, plot: bool = True) -> dict:
    hist = age_histogram(model)
    total = sum(hist["overall"].values())
    config = model.spiel_config
    data = {
        "method": config.method,
        "total_steps": total_steps,
        "reselection_steps": config.reselection_steps,
        "estimation_steps": config.estimation_steps,
        "num_indices": total,
        "grown_at_step": {str(k): v for k, v in hist["overall"].items()},
        "by_module": {m: {str(k): v for k, v in h.items()} for m, h in hist["by_module"].items()},
    }
    run_dir = Path(run_dir)
    (run_dir / AGES_JSON).write_text(json.dumps(data, indent=1))
    out = {
        "param_ages": str(run_dir / AGES_JSON),
        "initial_indices_kept": hist["overall"].get(0, 0) / max(1, total),
    }
    if plot:
        out["param_ages_plot"] = str(
            plot_ages(
                hist["overall"],
                total_steps,
                run_dir / AGES_PNG,
                title=f"SpIEL-{config.method.upper()}: parameter ages",
            )
        )
    return out


def plot_ages(overall: dict[int, int], total_steps: int, path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    total = max(1, sum(overall.values()))
    steps = sorted(overall)
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=120)
    width = max(
        1.0, 0.8 * (min(b - a for a, b in zip(steps, steps[1:], strict=False)) if len(steps) > 1 else 1)
    )
    ax.bar(steps, [overall[s] / total for s in steps], width=width, color="#3b6ea8")
    ax.set_xlabel("iteration when last grown")
    ax.set_ylabel("proportion of indices")
    ax.set_xlim(-max(1, total_steps) * 0.02, max(total_steps, max(steps, default=0)) * 1.02 + 1)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
