"""The collator (pad to longest, labels -100) and length-grouped batching."""

import torch

from spiel.data import DataCollatorForSpiel, LengthGroupedSampler
from spiel.data.sampler import length_grouped_indices


def test_collator_pads_right_to_the_longest():
    collate = DataCollatorForSpiel(pad_token_id=9)
    batch = collate([
        {"input_ids": [1, 5, 6], "labels": [-100, 5, 6], "extra": "ignored"},
        {"input_ids": [1, 7], "labels": [-100, 7]},
    ])
    assert batch["input_ids"].tolist() == [[1, 5, 6], [1, 7, 9]]
    assert batch["labels"].tolist() == [[-100, 5, 6], [-100, 7, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_collator_pad_multiple_and_tokenizer_pad_id():
    class Tok:
        pad_token_id, eos_token_id = None, 2  # no pad token: falls back to EOS

    batch = DataCollatorForSpiel(Tok(), pad_to_multiple_of=4)([{"input_ids": [1, 3, 4, 5, 6], "labels": [1, 3, 4, 5, 6]}])
    assert batch["input_ids"].tolist() == [[1, 3, 4, 5, 6, 2, 2, 2]]
    assert batch["labels"].tolist() == [[1, 3, 4, 5, 6, -100, -100, -100]]


def test_length_grouped_order():
    lengths = [(i * 37) % 101 + 1 for i in range(100)]
    order = length_grouped_indices(lengths, batch_size=4, seed=3, mega_batch_mult=5)
    assert sorted(order) == list(range(100))  # a permutation
    assert order == length_grouped_indices(lengths, batch_size=4, seed=3, mega_batch_mult=5)
    assert order != length_grouped_indices(lengths, batch_size=4, seed=4, mega_batch_mult=5)
    assert lengths[order[0]] == max(lengths)  # the longest batch comes first
    batches = [order[i:i + 4] for i in range(0, 100, 4)]
    # grouping cuts padding: total padded length is well below that of a random order
    padded = sum(4 * max(lengths[j] for j in b) for b in batches)
    rand = torch.randperm(100, generator=torch.Generator().manual_seed(0)).tolist()
    padded_random = sum(4 * max(lengths[j] for j in rand[i:i + 4]) for i in range(0, 100, 4))
    assert padded < 0.8 * padded_random


def test_sampler_epochs_differ():
    sampler = LengthGroupedSampler([3, 1, 4, 1, 5, 9, 2, 6], batch_size=2, seed=0)
    orders = []
    for epoch in range(5):
        sampler.set_epoch(epoch)
        orders.append(tuple(sampler))
    assert all(sorted(o) == list(range(8)) for o in orders) and len(sampler) == 8
    assert len(set(orders)) > 1  # a new order each epoch
    sampler.set_epoch(2)
    assert tuple(sampler) == orders[2]  # but reproducible
