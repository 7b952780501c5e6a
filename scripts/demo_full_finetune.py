"""Acceptance check of the demo task: base model vs a short full fine-tune, exact match on heldout.jsonl.

    python scripts/demo_full_finetune.py                 # ~2-3 min on 2 CPU cores
    python scripts/demo_full_finetune.py --steps 100 --json results.json --save outputs/demo_full

The package's plain PyTorch loop (spiel.training.engine.plain_loop; no SpIEL, no Trainer): every parameter
trained with AdamW on the Tülu-format demo conversations, encoded by spiel.data (loss on the assistant
answer and its EOS only, prompt tokens masked with -100, as in open-instruct). Prints a markdown table;
--json writes the numbers, per-skill scores and predictions.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from spiel.data.encode import encode_many
from spiel.eval.demo import DEMO_HELDOUT, evaluate_demo, load_demo
from spiel.training.engine.plain_loop import train_steps

REPO = Path(__file__).resolve().parents[1]


def finetune(model, tok, records, steps: int, batch_size: int, lr: float, seed: int) -> float:
    """Full fine-tuning with AdamW in the package's plain loop (linear warm-up over 3% of the steps, then
    linear decay; gradients clipped to norm 1); returns the mean loss of the last 20 steps."""
    data = encode_many([r["messages"] for r in records], tok)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)

    def log(step: int, loss: float) -> None:
        if step % 50 == 0 or step == steps - 1:
            print(f"  step {step:4d}  loss {loss:.4f}", flush=True)

    losses = train_steps(
        model,
        opt,
        data,
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        pad_token_id=tok.pad_token_id,
        max_grad_norm=1.0,
        on_step=log,
    )
    model.eval()
    recent = losses[-20:]
    return sum(recent) / len(recent)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default=str(REPO / "assets" / "tiny-llama"))
    p.add_argument("--train", default=str(REPO / "assets" / "demo" / "train.jsonl"))
    p.add_argument("--heldout", default=str(DEMO_HELDOUT))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="write results (with predictions) here")
    p.add_argument("--save", default=None, help="save the fine-tuned model here")
    p.add_argument("--skip-base", action="store_true", help="do not evaluate the base model")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tok = AutoTokenizer.from_pretrained(args.base, trust_remote_code=False)
    model = LlamaForCausalLM.from_pretrained(args.base, dtype=torch.float32, trust_remote_code=False).eval()

    base = None
    if not args.skip_base:
        t0 = time.time()
        base = evaluate_demo(model, tok, args.heldout)
        print(f"base: exact match {base['exact_match']:.3f} ({time.time() - t0:.0f}s)", flush=True)

    t0 = time.time()
    final_loss = finetune(model, tok, load_demo(args.train), args.steps, args.batch_size, args.lr, args.seed)
    train_s = time.time() - t0
    tuned = evaluate_demo(model, tok, args.heldout)
    print(f"full fine-tune: exact match {tuned['exact_match']:.3f} (train {train_s:.0f}s)", flush=True)

    skills = list(tuned["per_skill"])
    rows = [("tiny-llama base", base, 0, 0.0)] if base else []
    rows.append(("full fine-tune", tuned, args.steps, train_s))
    print()
    print("| model | steps | train time | exact match | " + " | ".join(skills) + " |")
    print("|---|---|---|---|" + "---|" * len(skills))
    for name, res, steps, secs in rows:
        cells = " | ".join(f"{res['per_skill'][s]:.2f}" for s in skills)
        print(f"| {name} | {steps} | {secs:.0f}s | **{res['exact_match']:.3f}** | {cells} |")
    print(
        f"\n(heldout: {tuned['num_examples']} examples; batch {args.batch_size}, lr {args.lr}, seed {args.seed})"
    )

    if args.json:
        out = {
            "base": base,
            "full_finetune": tuned,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "train_seconds": train_s,
            "final_train_loss": final_loss,
        }
        Path(args.json).write_text(json.dumps(out, indent=1))
    if args.save:
        model.save_pretrained(args.save)
        tok.save_pretrained(args.save)


if __name__ == "__main__":
    main()
