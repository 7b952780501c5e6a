"""Tables, JSON and bar charts for the benchmarks."""

from __future__ import annotations

import statistics
from pathlib import Path

LABELS = {
    "floor": "frozen floor",
    "full": "full FT",
    "lora": "LoRA",
    "lora0": "LoRA (dropout 0)",
    "ia3": "(IA)3",
    "ag": "SpIEL-AG",
    "ma": "SpIEL-MA",
    "static": "static sparse",
    "ag_applied": "SpIEL-AG (unmerged)",
    "ma_applied": "SpIEL-MA (unmerged)",
    "ag_loop": "SpIEL-AG (one by one)",
    "ma_loop": "SpIEL-MA (one by one)",
}


def label(key: str) -> str:
    if "@" in key:  # a method run from another tree (bench_step --baseline-tree)
        base, _, tree = key.partition("@")
        return f"{label(base)} @{tree}"
    if "+" in key:  # a SpIEL variant of the quality protocol, e.g. "ag+drop=change"
        base, _, rest = key.partition("+")
        return f"{label(base)} ({rest.replace('+', ', ')})"
    base, _, quant = key.partition("-")
    name = LABELS.get(base, base)
    method = _registry_method(
        base
    )  # QLoRA, qSpIEL: a rank-budget method on an NF4 base, as the paper names them
    quantized = method is not None and method.supports_quant and method.budget_key is not None
    return f"q{name}" if quant == "nf4" and quantized else (f"{name} (NF4)" if quant else name)


def _registry_method(name: str):
    from spiel.training.methods import METHOD_REGISTRY  # torch: only when labelling

    return METHOD_REGISTRY.get(name)


def _sparse(name: str) -> bool:
    method = _registry_method(name)
    return method is not None and method.is_sparse


def combine_rounds(results: list[dict]) -> dict:
    """One method's results from several rounds (processes): all timed steps pooled; peak memory: max."""
    steps = [t for r in results for t in r["step_s"]]
    cpu = [t for r in results for t in r.get("cpu_s", [])]
    first = results[0]
    return {
        **({"cpu_s_median": statistics.median(cpu), "cpu_s_mean": statistics.fmean(cpu)} if cpu else {}),
        "step_s_median": statistics.median(steps),
        "step_s_mean": statistics.fmean(steps),
        "extra_mem_mb": max(r["extra_mem_mb"] for r in results),
        "base_mem_mb": first["base_mem_mb"],
        "trainable": first["trainable"],
        "timed_steps": len(steps),
        "rounds": len(results),
        "round_medians": [statistics.median(r["step_s"]) for r in results],
        **(
            {
                "round_cpu_medians": [statistics.median(r["cpu_s"]) for r in results],
                "round_cpu_means": [statistics.fmean(r["cpu_s"]) for r in results],
            }
            if cpu
            else {}
        ),
        "final_loss": first["final_loss"],
        "bytes_per_entry": first.get("bytes_per_entry"),
        "reselection": _mean_reselection([r.get("reselection") for r in results]),
        "reselection_cpu": _mean_reselection([r.get("reselection_cpu") for r in results]),
    }


def _mean_reselection(entries: list[dict | None]) -> dict | None:
    entries = [e for e in entries if e]
    if not entries:
        return None
    return {k: statistics.fmean(e[k] for e in entries) for k in entries[0]}


def ratios(methods: dict[str, dict], reference: str = "lora") -> dict[str, dict]:
    """``{name: {"time", "mem"}}`` against the LoRA of the same quantization (QLoRA for ``*-nf4``), and
    ``time_floor`` against the frozen floor of the same quantization. Where the run has LoRA with dropout 0
    (``lora0``), also ``time_lora0`` (medians) and ``mean_lora0`` (means) against it; ``mean`` is the
    ratio of means to ``reference``."""
    out = {}
    for name, m in methods.items():
        quant = name.partition("-")[2]
        ref = methods.get(f"{reference}-{quant}" if quant else reference)
        ref0 = methods.get(f"lora0-{quant}" if quant else "lora0")
        floor = methods.get(f"floor-{quant}" if quant else "floor")
        entry = {}
        if ref:
            entry["time"] = m["step_s_median"] / ref["step_s_median"]
            if "step_s_mean" in m and "step_s_mean" in ref:
                entry["mean"] = m["step_s_mean"] / ref["step_s_mean"]
            entry["mem"] = m["extra_mem_mb"] / ref["extra_mem_mb"] if ref["extra_mem_mb"] > 0 else None
        if ref0:
            entry["time_lora0"] = m["step_s_median"] / ref0["step_s_median"]
            entry["mean_lora0"] = m["step_s_mean"] / ref0["step_s_mean"]
            if "cpu_s_median" in m and "cpu_s_median" in ref0:
                entry["cpu_lora0"] = m["cpu_s_median"] / ref0["cpu_s_median"]
                entry["cpu_mean_lora0"] = m["cpu_s_mean"] / ref0["cpu_s_mean"]
            entry["mem_lora0"] = (
                m["extra_mem_mb"] / ref0["extra_mem_mb"] if ref0["extra_mem_mb"] > 0 else None
            )
        if floor:
            entry["time_floor"] = m["step_s_median"] / floor["step_s_median"]
            if "cpu_s_median" in m and "cpu_s_median" in floor:
                entry["cpu_floor"] = m["cpu_s_median"] / floor["cpu_s_median"]
        out[name] = entry
    return out


def _fmt(x, spec=".3f"):
    return "–" if x is None else format(x, spec)


def _pair(r: dict, median_key: str, mean_key: str) -> str:
    return f"{_fmt(r.get(median_key))} / {_fmt(r.get(mean_key))}" if r.get(median_key) is not None else "–"


def step_table(methods: dict[str, dict], rat: dict[str, dict]) -> str:
    """Time (median / mean) against LoRA with dropout 0 and with the paper's 0.1, and the floor; memory;
    bytes per trainable entry; reselection's extra time per period in median steps."""
    lines = [
        "| method | trainable | step median / mean (s) | × LoRA dropout 0 (median / mean) | "
        "× LoRA dropout 0.1 (median / mean) | × floor (median) | extra memory (MB) | memory × LoRA 0 / 0.1 | "
        "bytes per entry | reselection per period (median steps) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in methods.items():
        r = rat.get(name, {})
        b = m.get("bytes_per_entry") or {}
        bpe = (
            "–"
            if not b
            else f"{b['per_entry']:.1f}"
            + (f" + {b['shared_per_entry']:.2f}" if b.get("shared_per_entry") else "")
        )
        res = m.get("reselection")
        lines.append(
            f"| {label(name)} | {m['trainable']:,} | {m['step_s_median']:.3f} / {m['step_s_mean']:.3f} | "
            f"{_pair(r, 'time_lora0', 'mean_lora0')} | {_pair(r, 'time', 'mean')} | {_fmt(r.get('time_floor'))} | "
            f"{m['extra_mem_mb']:.0f} | {_fmt(r.get('mem_lora0'), '.2f')} / {_fmt(r.get('mem'), '.2f')} | {bpe} | "
            f"{_fmt(res['extra_steps_per_period'], '.2f') if res else '–'} |"
        )
    return "\n".join(lines)


def cpu_table(methods: dict[str, dict], rat: dict[str, dict]) -> str:
    """The same steps by CPU seconds of the process (a shared box inflates wall time more than CPU time)."""
    lines = [
        "| method | CPU s per step median / mean | × LoRA dropout 0 (median / mean) | × floor (median) |",
        "|---|---:|---:|---:|",
    ]
    for name, m in methods.items():
        if "cpu_s_median" in m:
            r = rat.get(name, {})
            lines.append(
                f"| {label(name)} | {m['cpu_s_median']:.3f} / {m['cpu_s_mean']:.3f} | "
                f"{_pair(r, 'cpu_lora0', 'cpu_mean_lora0')} | {_fmt(r.get('cpu_floor'))} |"
            )
    return "\n".join(lines)


def reselection_table(methods: dict[str, dict], key: str = "reselection") -> str:
    """Where SpIEL's extra time per reselection period goes, by kind of step (``key="reselection_cpu"``: in CPU
    seconds)."""
    lines = [
        "| method | plain step median (s) | AG probe (dense grad + top-k) s/period | estimation s/period | "
        "reselection step s/period | total s/period | total in median steps |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in methods.items():
        res = m.get(key)
        if res:
            lines.append(
                f"| {label(name)} | {res['plain_median_s']:.3f} | {res['probe_s_per_period']:.3f} | "
                f"{res['estimate_s_per_period']:.3f} | {res['reselect_s_per_period']:.3f} | "
                f"{res['extra_s_per_period']:.3f} | {res['extra_steps_per_period']:.2f} |"
            )
    return "\n".join(lines)


def step_chart(methods: dict[str, dict], rat: dict[str, dict], path: str | Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(methods)
    colors = [
        "#999999" if n.startswith("floor") else "#d62728" if _sparse(n.partition("-")[0]) else "#1f77b4"
        for n in names
    ]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    panels = (
        ("step_s_median", "time per optimizer step (s, median)", "time"),
        ("extra_mem_mb", "memory beyond the frozen model (MB)", "mem"),
    )
    for ax, (key, ylabel, rkey) in zip(axes, panels, strict=True):
        values = [methods[n][key] for n in names]
        bars = ax.bar(range(len(names)), values, color=colors)
        for bar, n in zip(bars, names, strict=True):
            r = rat.get(n, {}).get(rkey)
            if r is not None:
                ax.annotate(
                    f"{r:.2f}×",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
        ax.set_xticks(range(len(names)), [label(n) for n in names], rotation=30, ha="right")
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_title("× LoRA above each bar", fontsize=9)
    axes[1].set_title("× LoRA above each bar", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def quality_table(rows: dict[str, dict]) -> str:
    lines = [
        "| method | trainable | lr (picked) | λ | validation EM | validation loss | held-out loss | "
        "held-out exact match |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {label(name)} | {r['trainable']:,} | {_fmt(r.get('lr'), 'g')} | "
            f"{_fmt(r.get('weight_decay'), '.3g')} | {_fmt(r.get('val_exact_match'), '.3f')} | "
            f"{_fmt(r.get('val_loss'), '.4f')} | {r['heldout_loss']:.4f} | **{r['exact_match']:.3f}** |"
        )
    return "\n".join(lines)


def quality_chart(rows: dict[str, dict], path: str | Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    colors = [
        "#999999"
        if n in ("base", "full")
        else "#d62728"
        if _sparse(n)
        else "#ff7f0e"
        if n == "static"
        else "#1f77b4"
        for n in names
    ]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, ylabel in (
        (axes[0], "exact_match", "held-out exact match"),
        (axes[1], "heldout_loss", "held-out loss (answer tokens)"),
    ):
        values = [rows[n][key] for n in names]
        bars = ax.bar(range(len(names)), values, color=colors)
        for bar, v in zip(bars, values, strict=True):
            ax.annotate(
                f"{v:.3f}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_xticks(range(len(names)), [label(n) for n in names], rotation=30, ha="right")
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the fair quality protocol (scripts/bench_quality.py) -------------------------------------------------------
def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def protocol_rows(runs: list[dict], methods: list[str], base: dict | None = None) -> dict[str, dict]:
    """Per method: the picked (lr, λ) and its validation scores, and over the seed runs the mean and
    standard deviation of held-out exact match and loss, the training loss, and (sparse methods) the
    support's concentration averaged over seeds. Methods without finished seed runs are left out."""
    from spiel.bench.quality import pick

    rows = {}
    if base:
        rows["base"] = {"exact_match": base["exact_match"], "heldout_loss": base["heldout_loss"], "seeds": 0}
    for m in methods:
        search = [r for r in runs if r["method"] == m and r["stage"] == "search"]
        seeds = [r for r in runs if r["method"] == m and r["stage"] == "seeds"]
        if not seeds:
            continue
        if search:
            best = pick(search)
            seeds = [r for r in seeds if (r["lr"], r["weight_decay"]) == (best["lr"], best["weight_decay"])]
            if not seeds:  # none at the pick yet
                continue
        else:  # seeds at a fixed setting, no search
            best = {
                "lr": seeds[0]["lr"],
                "weight_decay": seeds[0]["weight_decay"],
                "val_exact_match": float("nan"),
                "val_loss": float("nan"),
            }
        em, em_sd = _mean_std([r["exact_match"] for r in seeds])
        loss, loss_sd = _mean_std([r["heldout_loss"] for r in seeds])
        row = {
            "trainable": seeds[0]["trainable"],
            "lr": best["lr"],
            "weight_decay": best["weight_decay"],
            "val_exact_match": best["val_exact_match"],
            "val_loss": best["val_loss"],
            "seeds": len(seeds),
            "exact_match": em,
            "exact_match_std": em_sd,
            "heldout_loss": loss,
            "heldout_loss_std": loss_sd,
            "train_loss": statistics.fmean(r["train_loss"] for r in seeds),
            "grid": len(search),
            "per_seed": [r["exact_match"] for r in seeds],
        }
        supports = [r["support"] for r in seeds if r.get("support")]
        if supports:
            row["support"] = {
                "rows": statistics.fmean(
                    statistics.fmean(s["rows"][p] for p in ("gate_proj", "up_proj")) for s in supports
                ),
                "cols": statistics.fmean(s["cols"]["down_proj"] for s in supports),
                "attn_rows": statistics.fmean(
                    statistics.fmean(s["rows"][p] for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
                    for s in supports
                ),
                "dead_neurons": statistics.fmean(s["dead_neurons"] for s in supports),
            }
        rows[m] = row
    return rows


def protocol_table(rows: dict[str, dict]) -> str:
    lines = [
        "| method | trainable | lr | λ | lr·λ | grid | val EM (picked) | held-out EM, mean ± std | "
        "held-out loss, mean ± std | train loss | MLP rows in top 10% (gate/up) | down_proj cols in top 10% "
        "| attention rows in top 10% | MLP neurons with no entry |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        if not r.get("seeds"):
            lines.append(
                f"| {label(name)} | 0 | – | – | – | – | – | {r['exact_match']:.3f} | "
                f"{r['heldout_loss']:.3f} | – | – | – | – | – |"
            )
            continue
        s = r.get("support")
        conc = (
            f"{s['rows']:.0%} | {s['cols']:.0%} | {s['attn_rows']:.0%} | {s['dead_neurons']:.0%}"
            if s
            else "– | – | – | –"
        )
        lines.append(
            f"| {label(name)} | {r['trainable']:,} | {r['lr']:g} | {r['weight_decay']:g} | "
            f"{r['lr'] * r['weight_decay']:.2g} | {r['grid']} | {r['val_exact_match']:.3f} | "
            f"**{r['exact_match']:.3f} ± {r['exact_match_std']:.3f}** | "
            f"{r['heldout_loss']:.3f} ± {r['heldout_loss_std']:.3f} | {r['train_loss']:.3f} | {conc} |"
        )
    return "\n".join(lines)
