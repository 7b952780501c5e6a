"""The collator: pads to the longest example of the batch, labels -100 on the padding."""

import torch

from spiel.data import DataCollatorForSpiel


def test_collator_pads_right_to_the_longest():
    collate = DataCollatorForSpiel(pad_token_id=9)
    batch = collate(
        [
            {"input_ids": [1, 5, 6], "labels": [-100, 5, 6], "extra": "ignored"},
            {"input_ids": [1, 7], "labels": [-100, 7]},
        ]
    )
    assert batch["input_ids"].tolist() == [[1, 5, 6], [1, 7, 9]]
    assert batch["labels"].tolist() == [[-100, 5, 6], [-100, 7, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_collator_pad_multiple_and_tokenizer_pad_id():
    class Tok:
        pad_token_id, eos_token_id = None, 2  # no pad token: falls back to EOS

    batch = DataCollatorForSpiel(Tok(), pad_to_multiple_of=4)(
        [{"input_ids": [1, 3, 4, 5, 6], "labels": [1, 3, 4, 5, 6]}]
    )
    assert batch["input_ids"].tolist() == [[1, 3, 4, 5, 6, 2, 2, 2]]
    assert batch["labels"].tolist() == [[1, 3, 4, 5, 6, -100, -100, -100]]
