"""Acceptance check of the demo task: base model vs a short full fine-tune, exact match on heldout.jsonl.

    python scripts/demo_full_finetune.py                 # ~2-3 min on 2 CPU cores
    python scripts/demo_full_finetune.py --steps 100 --json results.json --save outputs/demo_full

A plain PyTorch loop (no SpIEL, no Trainer): every parameter trained with AdamW on the Tülu-format demo
conversations, loss on the assistant answer and its EOS only (prompt tokens masked with -100, as in
open-instruct). Prints a markdown table; --json writes the numbers, per-skill scores and predictions.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from spiel.data.template import chat_prompt, render_messages
from spiel.eval.demo import DEMO_HELDOUT, evaluate_demo, load_demo

REPO = Path(__file__).resolve().parents[1]


def encode_single_turn(messages: list[dict], tok) -> tuple[list[int], list[int]]:
    """Ids and labels of one conversation ending in an assistant turn; only that turn (and EOS) is trained.

    The demo has one user turn per conversation, so masking the rendered prompt is exactly open-instruct's
    masking here (the general multi-turn version lives in spiel.data).
    """
    ids = tok(render_messages(messages, tok.eos_token))["input_ids"]
    n_prompt = len(tok(chat_prompt(messages, tok.eos_token))["input_ids"])
    if ids[:n_prompt] != tok(chat_prompt(messages, tok.eos_token))["input_ids"]:
        raise ValueError("prompt tokens are not a prefix of the conversation tokens")
    return ids, [-100] * n_prompt + ids[n_prompt:]


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def finetune(model, tok, records, steps: int, batch_size: int, lr: float, seed: int) -> float:
    """Full fine-tuning with AdamW, linear warmup (3%) and linear decay; returns the last losses' mean."""
    data = [encode_single_turn(r["messages"], tok) for r in records]
    rng = random.Random(seed)
    order: list[int] = []
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    warmup = max(1, int(0.03 * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (steps - s) / (steps - warmup))
    )
    model.train()
    recent = []
    for step in range(steps):
        if len(order) < batch_size:
            perm = list(range(len(data)))
            rng.shuffle(perm)
            order += perm
        idx, order = order[:batch_size], order[batch_size:]
        loss = model(**collate([data[i] for i in idx], tok.pad_token_id)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        recent = (recent + [loss.item()])[-20:]
        if step % 50 == 0 or step == steps - 1:
            print(f"  step {step:4d}  loss {loss.item():.4f}", flush=True)
    model.eval()
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
    tok = AutoTokenizer.from_pretrained(args.base)
    model = LlamaForCausalLM.from_pretrained(args.base, dtype=torch.float32).eval()

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
    print(f"\n(heldout: {tuned['num_examples']} examples; batch {args.batch_size}, lr {args.lr}, seed {args.seed})")

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
