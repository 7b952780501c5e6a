"""Why SpIEL-AG collapses under weak decay on the demo: growth, drop-by-magnitude, or Adam seeding?

Trains the tiny base on the demo task with SpIEL-AG at lr 3e-2 and a weak λ (0.3 by default), the setting in
which the paper's growth rule collapsed, for the first ``--steps`` of the demo's 188-step schedule, with
variants that change one thing each:

* ``paper``: the paper's rule;
* ``paper-fresh``: the paper's candidates and order, but grown slots start a fresh Adam state (zero moments,
  age 0) instead of being seeded with the phase's statistics: isolates the seeding;
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
from spiel.bench.quality import batches, collate, encode, lr_lambda, split_records
from spiel.eval.demo import load_demo
from spiel.selection import budget_shares, model_concentration
from spiel.testing import DEMO_DIR, tiny_model, tiny_tokenizer

VARIANTS = {"paper": ("paper", False), "paper-fresh": ("paper", True), "normalized": ("normalized", False),
            "capped": ("capped", False), "random": ("random", False), "static": ("static", False)}


def row_norm_ratio(model) -> float:
    """The largest ``‖(W + Δ)[r]‖ / ‖W[r]‖`` over every row of every target matrix."""
    worst = 0.0
    for layer in model.deltas.values():
        weight = layer.weight.detach().float()
        ratio = (weight + layer.delta_weight(torch.float32)).norm(dim=1) / weight.norm(dim=1).clamp_min(1e-12)
        worst = max(worst, float(ratio.max()))
    return worst


def run(variant: str, args, base, train_examples, pad_id) -> dict:
    growth, fresh = VARIANTS[variant]
    torch.manual_seed(args.seed)
    mcfg = method_config("ag", 4, lr=args.lr, weight_decay=args.weight_decay)
    mcfg.growth, mcfg.budget = growth, args.budget
    model, optimizer = wrap_for_training("ag", copy.deepcopy(base), mcfg, seed=args.seed, quantized=False)
    selector = model.make_selector(optimizer, total_steps=args.schedule_steps)
    if fresh:  # the same candidates and order, no seeding: zero moments at age 0
        selector.rule._adam_seeds = lambda layer, mean, mean_sq, age: {"age": 0}
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(args.schedule_steps))
    first = selector.schedule.estimation_steps
    losses, report = [], {}
    model.train()
    for step, idx in enumerate(batches(len(train_examples), args.schedule_steps, 16, args.seed)[: args.steps], 1):
        loss = model(**collate([train_examples[i] for i in idx], pad_id)).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        selector.step()
        losses.append(float(loss.detach()))
        if step == first:
            concentration = model_concentration(model.deltas)["mean"]
            report.update(top10_rows_after_first=concentration["top10_rows_share"],
                          empty_rows_after_first=concentration["empty_rows_share"])
    selector.close()
    concentration = model_concentration(model.deltas)["mean"]
    return {"variant": variant, "loss_before_first": statistics.mean(losses[:first]),
            "loss_after_first": statistics.mean(losses[first : first + 10]),
            "loss_last10": statistics.mean(losses[-10:]), "max_loss": max(losses[first:]), **report,
            "top10_rows_end": concentration["top10_rows_share"], "empty_rows_end": concentration["empty_rows_share"],
            "max_row_norm_ratio": row_norm_ratio(model),
            "shares_by_projection": budget_shares(model.deltas)["by_projection"],
            "shares_by_layer": budget_shares(model.deltas)["by_layer"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--schedule-steps", type=int, default=188, help="the run whose start is studied (the demo's)")
    p.add_argument("--lr", type=float, default=3e-2)
    p.add_argument("--weight-decay", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--budget", default="per_matrix", choices=("per_matrix", "global"))
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args()
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
