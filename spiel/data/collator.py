"""Batching: right-pad to the longest example in the batch; labels padded with -100 (no loss)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from spiel.data.encode import IGNORE_INDEX


class DataCollatorForSpiel:
    """Callable collator for the HF Trainer or a plain DataLoader.

    Features are mappings with `input_ids` and `labels` (extra keys are ignored). The pad id is the
    tokenizer's pad token, else its EOS, else 0: padded positions are masked by `attention_mask` and
    carry label -100, so their id never matters to the loss.
    """

    def __init__(
        self,
        tokenizer=None,
        pad_token_id: int | None = None,
        pad_to_multiple_of: int | None = None,
        label_pad_token_id: int = IGNORE_INDEX,
    ):
        if pad_token_id is None and tokenizer is not None:
            pad_token_id = (
                tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            )
        self.pad_token_id = 0 if pad_token_id is None else int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.label_pad_token_id = label_pad_token_id

    def __call__(self, features: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        for f in features:
            if len(f["input_ids"]) != len(f["labels"]):
                raise ValueError("each example needs as many labels as input_ids")
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        batch = len(features)
        input_ids = torch.full((batch, longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, longest), self.label_pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, longest), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[row, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.as_tensor(f["labels"], dtype=torch.long)
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
