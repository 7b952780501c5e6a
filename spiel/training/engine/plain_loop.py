"""The plain PyTorch training loop (no Trainer), written once for the benchmarks and the plain-loop demo.

Per optimizer step: the step's examples (reshuffled epochs from one seeded RNG) are split into
micro-batches, each padded by the package's collator, run forward and backward with its loss divided by
the number of micro-batches (gradient accumulation: the step's gradient is the mean of the micro-batch
means), then optional gradient clipping, the optimizer step, the learning-rate schedule (linear warm-up
over the first 3% of the steps, then linear decay to 0, the Trainer's ``linear`` schedule), ``zero_grad``
and, for SpIEL, ``selector.step()`` (after the optimizer step, as the paper's Algorithm 1 orders them).
``spiel-train`` keeps the HF Trainer; this loop is for scripts that want every line in view.

``label_logits_only``: the output head runs only at positions that predict a label (short answers after
long prompts: a fraction of the tokens), and the loss is the same mean cross-entropy over label tokens.
On a model with a large vocabulary (SmolLM2: 49,152 words) the head is a large part of a CPU step.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch

from spiel.data.collator import DataCollatorForSpiel

WARMUP_RATIO = 0.03


def shuffled_batches(n_examples: int, steps: int, batch_size: int, seed: int) -> list[list[int]]:
    """The example indices of every step: reshuffled epochs from one seeded RNG, no example repeated
    within an epoch; an epoch's tail carries over into the next step."""
    if n_examples < 1 or batch_size < 1 or steps < 0:
        raise ValueError(
            f"need n_examples >= 1, batch_size >= 1 and steps >= 0, got {n_examples}, {batch_size}, {steps}"
        )
    rng = random.Random(seed)
    order: list[int] = []
    out = []
    for _ in range(steps):
        while len(order) < batch_size:
            perm = list(range(n_examples))
            rng.shuffle(perm)
            order += perm
        out.append(order[:batch_size])
        order = order[batch_size:]
    return out


def warmup_linear_decay(steps: int, warmup_ratio: float = WARMUP_RATIO) -> Callable[[int], float]:
    """The learning-rate factor of step ``s`` (for ``LambdaLR``): (s+1)/w during the w = round(ratio·steps)
    warm-up steps (at least 1), then linear decay to 0 at ``steps``."""
    warmup = max(1, round(warmup_ratio * steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (steps - step) / max(1, steps - warmup))

    return factor


def _output_head(model) -> torch.nn.Module:
    heads = [m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] == "lm_head"]
    if len(heads) != 1:
        raise ValueError(f"label_logits_only needs exactly one module named lm_head, found {len(heads)}")
    return heads[0]


def label_position_loss(model, batch: dict) -> torch.Tensor:
    """Mean cross-entropy over the label tokens (labels != -100) of a batch, with the output head (a module
    named ``lm_head``) applied only to the hidden states that predict a label: a forward pre-hook hands it
    those rows (position p predicts token p + 1), so the model's logits are one row per label token."""
    labels = batch["labels"]
    predicts = torch.zeros_like(labels, dtype=torch.bool)
    predicts[:, :-1] = labels[:, 1:] != -100
    if not predicts.any():
        raise ValueError("a batch without label tokens has no loss")

    def keep_label_rows(_module, args):
        return (args[0][predicts],)

    handle = _output_head(model).register_forward_pre_hook(keep_label_rows)
    try:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    finally:
        handle.remove()
    return torch.nn.functional.cross_entropy(logits.float(), labels[:, 1:][predicts[:, :-1]])


def train_steps(
    model,
    optimizer,
    examples: Sequence[dict],
    *,
    steps: int,
    batch_size: int,
    seed: int,
    pad_token_id: int,
    micro_batch_size: int | None = None,
    selector=None,
    max_grad_norm: float | None = None,
    warmup_ratio: float = WARMUP_RATIO,
    label_logits_only: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``model`` for ``steps`` optimizer steps of ``batch_size`` encoded examples (``input_ids`` and
    ``labels``); returns each step's loss (the mean of its micro-batch losses). ``micro_batch_size`` must
    divide ``batch_size`` (None: one micro-batch). ``on_step(step, loss)`` is called after every step."""
    micro = micro_batch_size or batch_size
    if batch_size % micro:
        raise ValueError(f"micro_batch_size {micro} must divide batch_size {batch_size}")
    accum = batch_size // micro
    collate = DataCollatorForSpiel(pad_token_id=pad_token_id)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear_decay(steps, warmup_ratio))
    params = [p for g in optimizer.param_groups for p in g["params"]]
    model.train()
    losses = []
    for step, idx in enumerate(shuffled_batches(len(examples), steps, batch_size, seed)):
        total = 0.0
        for start in range(0, batch_size, micro):
            batch = collate([examples[i] for i in idx[start : start + micro]])
            loss = (label_position_loss(model, batch) if label_logits_only else model(**batch).loss) / accum
            loss.backward()
            total += float(loss.detach())
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if selector is not None:
            selector.step()
        losses.append(total)
        if on_step is not None:
            on_step(step, total)
    return losses
