"""Why SpIEL-AG collapses under weak decay on the demo: growth, drop-by-magnitude, or Adam seeding?

Trains the tiny base on the demo task with SpIEL-AG at lr 3e-2 and a weak λ (0.3 by default), the setting in
which the paper's growth rule collapsed, for the first ``--steps`` of the demo's 188-step schedule, with
variants that change one thing each:

* ``paper``: the paper's rule;
* ``paper-fresh``: the paper's candidates and order, but grown slots start a fresh Adam state (zero moments,
  age 0; ``method.adam_seeding=none``) instead of being seeded with the phase's statistics: isolates the
  seeding; ``paper-released``: the seeding the released code effectively used (``adam_seeding=released``);
* ``normalized``, ``capped``, ``random``: growth that keeps the support spread (random: also fresh Adam);
* ``static``: no reselection.

Drop needs no variant of its own: the first reselection replaces every entry (eq. 8), so drop chooses
nothing there. Prints, per variant, the training loss before and after the first reselection, the share of
entries in the top 10% of rows, the share of rows with no entry, and the largest ratio of a row's norm of
``W + Δ`` to its norm of ``W`` (how far the deltas push single neurons). One thread; the box may be shared.

    python scripts/study_growth_collapse.py --steps 40 --weight-decay 0.3 [--budget global]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from spiel.bench.models import method_config, wrap_for_training
from spiel.bench.quality import encode, split_records
from spiel.eval.demo import load_demo
from spiel.selection import budget_shares, model_concentration
from spiel.testing import DEMO_DIR, tiny_model, tiny_tokenizer
from spiel.training.engine.plain_loop import train_steps

# variant: (growth, adam_seeding)
VARIANTS = {
    "paper": ("paper", "full"),
    "paper-fresh": ("paper", "none"),
    "paper-released": ("paper", "released"),
    "normalized": ("normalized", "full"),
    "capped": ("capped", "full"),
    "random": ("random", "full"),
    "static": ("static", "full"),
}


class _Enough(Exception):
    """Raised from the step callback once the studied start of the schedule is done."""


def row_norm_ratio(model) -> float:
    """The largest ``‖(W + Δ)[r]‖ / ‖W[r]‖`` over every row of every target matrix."""
    worst = 0.0
    for layer in model.deltas.values():
        weight = layer.weight.detach().float()
        ratio = (weight + layer.delta_weight(torch.float32)).norm(dim=1) / weight.norm(dim=1).clamp_min(1e-12)
        worst = max(worst, float(ratio.max()))
    return worst


def run(variant: str, args, base, train_examples, pad_id) -> dict:
    growth, seeding = VARIANTS[variant]
    torch.manual_seed(args.seed)
    mcfg = method_config("ag", 4, lr=args.lr, weight_decay=args.weight_decay)
    mcfg.growth, mcfg.budget, mcfg.adam_seeding = growth, args.budget, seeding
    model, optimizer = wrap_for_training("ag", copy.deepcopy(base), mcfg, seed=args.seed, quantized=False)
    selector = model.make_selector(optimizer, total_steps=args.schedule_steps)
    first = selector.schedule.estimation_steps
    losses, report = [], {}

    def on_step(step: int, loss: float) -> None:
        losses.append(loss)
        if len(losses) == first:
            concentration = model_concentration(model.deltas)["mean"]
            report.update(
                top10_rows_after_first=concentration["top10_rows_share"],
                empty_rows_after_first=concentration["empty_rows_share"],
            )
        if len(losses) == args.steps:
            raise _Enough

    try:  # the first --steps of the --schedule-steps run (its learning-rate schedule and reselections)
        train_steps(
            model,
            optimizer,
            train_examples,
            steps=args.schedule_steps,
            batch_size=16,
            seed=args.seed,
            pad_token_id=pad_id,
            selector=selector,
            on_step=on_step,
        )
    except _Enough:
        pass
    selector.close()
    concentration = model_concentration(model.deltas)["mean"]
    return {
        "variant": variant,
        "loss_before_first": statistics.mean(losses[:first]),
        "loss_after_first": statistics.mean(losses[first : first + 10]),
        "loss_last10": statistics.mean(losses[-10:]),
        "max_loss": max(losses[first:]),
        **report,
        "top10_rows_end": concentration["top10_rows_share"],
        "empty_rows_end": concentration["empty_rows_share"],
        "max_row_norm_ratio": row_norm_ratio(model),
        "shares_by_projection": budget_shares(model.deltas)["by_projection"],
        "shares_by_layer": budget_shares(model.deltas)["by_layer"],
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument(
        "--schedule-steps", type=int, default=188, help="the run whose start is studied (the demo's)"
    )
    p.add_argument("--lr", type=float, default=3e-2)
    p.add_argument("--weight-decay", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--budget", default="per_matrix", choices=("per_matrix", "global"))
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    tokenizer = tiny_tokenizer()
    train_records, _ = split_records(load_demo(DEMO_DIR / "train.jsonl"), 300, args.seed)
    train_examples = encode(train_records, tokenizer)
    base = tiny_model()
    rows = []
    for variant in args.variants.split(","):
        start = time.perf_counter()
        rows.append(run(variant, args, base, train_examples, tokenizer.pad_token_id))
        rows[-1]["seconds"] = time.perf_counter() - start
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
