"""The package's plain training loop (spiel.training.engine.plain_loop) against a hand-written PyTorch loop on a
tiny random LLaMA: same data order, padding, loss, gradient accumulation, clipping and schedule, so the
same weights after a few AdamW steps."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from spiel.bench.models import LlamaShape, random_llama
from spiel.training.engine.plain_loop import shuffled_batches, train_steps, warmup_linear_decay

SHAPE = LlamaShape(hidden=32, intermediate=64, layers=2, heads=4, kv_heads=4, vocab=64)
PAD = 0


def _examples(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(4, 12, (1,), generator=g))
        ids = torch.randint(1, SHAPE.vocab, (length,), generator=g).tolist()
        prompt = int(torch.randint(1, length - 1, (1,), generator=g))
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return out


def _reference_loss(model, examples: list[dict]) -> torch.Tensor:
    """Right-padded batch, mean next-token cross-entropy over the labelled positions, written out."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), PAD)
    labels = torch.full((len(examples), width), -100)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(e["input_ids"]), torch.tensor(e["labels"]), 1
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)


def _reference_train(model, examples, *, steps, batch_size, micro, seed, lr, max_grad_norm):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    warmup = max(1, round(0.03 * steps))
    losses = []
    for step, idx in enumerate(shuffled_batches(len(examples), steps, batch_size, seed)):
        factor = (step + 1) / warmup if step < warmup else (steps - step) / (steps - warmup)
        for group in opt.param_groups:
            group["lr"] = lr * factor
        parts = [idx[i : i + micro] for i in range(0, batch_size, micro)]
        total = 0.0
        for part in parts:
            loss = _reference_loss(model, [examples[i] for i in part]) / len(parts)
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), max_grad_norm)
        opt.step()
        opt.zero_grad()
        losses.append(total)
    return losses


@pytest.mark.parametrize("micro", [4, 2])
def test_loop_matches_a_hand_written_loop(micro):
    examples = _examples(10)
    model = random_llama(SHAPE, 32, seed=1).train()
    reference = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    losses = train_steps(
        model,
        opt,
        examples,
        steps=6,
        batch_size=4,
        micro_batch_size=micro,
        seed=3,
        pad_token_id=PAD,
        max_grad_norm=0.5,
    )
    ref_losses = _reference_train(
        reference, examples, steps=6, batch_size=4, micro=micro, seed=3, lr=1e-2, max_grad_norm=0.5
    )
    assert losses == pytest.approx(ref_losses, rel=1e-5)
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(next(model.parameters()), next(random_llama(SHAPE, 32, seed=1).parameters()))


@pytest.mark.parametrize("micro", [4, 2])
def test_head_at_label_positions_only_trains_like_the_hand_written_loop(micro):
    """label_logits_only: the head sees only the rows that predict a label, the loss and the weights are the
    full-logits loop's (to rounding)."""
    examples = _examples(10)
    model = random_llama(SHAPE, 32, seed=1).train()
    reference = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    seen = []
    hook = model.lm_head.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    losses = train_steps(
        model,
        opt,
        examples,
        steps=6,
        batch_size=4,
        micro_batch_size=micro,
        seed=3,
        pad_token_id=PAD,
        max_grad_norm=0.5,
        label_logits_only=True,
    )
    hook.remove()
    ref_losses = _reference_train(
        reference, examples, steps=6, batch_size=4, micro=micro, seed=3, lr=1e-2, max_grad_norm=0.5
    )
    assert losses == pytest.approx(ref_losses, rel=1e-5)
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        # the loss is summed in another order; Adam divides a near-zero gradient's rounding by its own size
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5, msg=name)
    labelled = [sum(1 for t in e["labels"][1:] if t != -100) for e in examples]
    assert all(len(shape) == 2 for shape in seen) and max(s[0] for s in seen) <= micro * max(labelled)


def test_head_at_label_positions_refuses_a_batch_without_labels():
    from spiel.training.engine.plain_loop import label_position_loss

    model = random_llama(SHAPE, 32, seed=1)
    batch = {
        "input_ids": torch.ones(2, 5, dtype=torch.long),
        "attention_mask": torch.ones(2, 5, dtype=torch.long),
        "labels": torch.full((2, 5), -100),
    }
    with pytest.raises(ValueError, match="without label tokens"):
        label_position_loss(model, batch)


def test_loop_steps_the_selector_after_each_optimizer_step():
    calls = []

    class Recorder:
        def step(self):
            calls.append(opt.state[next(iter(opt.state))]["step"].item())

    model = random_llama(SHAPE, 32, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_steps(
        model, opt, _examples(6), steps=3, batch_size=2, seed=0, pad_token_id=PAD, selector=Recorder()
    )
    assert calls == [1, 2, 3]


def test_batches_are_reshuffled_epochs_from_the_seed():
    steps = shuffled_batches(7, steps=9, batch_size=3, seed=5)
    flat = [i for b in steps for i in b]
    assert all(len(b) == 3 for b in steps)
    assert sorted(flat[:7]) == list(range(7)) and sorted(flat[7:14]) == list(range(7))
    assert shuffled_batches(7, 9, 3, seed=5) == steps and shuffled_batches(7, 9, 3, seed=6) != steps


def test_schedule_warms_up_then_decays_to_zero():
    f = warmup_linear_decay(100)  # warm-up: round(3.0) = 3 steps
    assert [f(s) for s in range(5)] == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0, 96 / 97])
    assert f(99) == pytest.approx(1 / 97) and f(100) == 0.0
    assert warmup_linear_decay(10)(0) == 1.0  # at least one warm-up step


def test_micro_batch_must_divide_the_batch():
    model = random_llama(SHAPE, 32, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="micro_batch_size 3 must divide batch_size 4"):
        train_steps(
            model, opt, _examples(6), steps=1, batch_size=4, micro_batch_size=3, seed=0, pad_token_id=PAD
        )


@pytest.mark.parametrize("args", [(0, 0, 2), (5, 3, 0), (5, -1, 2)])
def test_batches_refuse_an_empty_set_or_batch(args):
    n, steps, batch = args
    with pytest.raises(ValueError, match="need n_examples >= 1"):
        shuffled_batches(n, steps, batch, seed=0)
