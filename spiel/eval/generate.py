"""Batched text generation shared by the benchmarks.

`generate` pads on the LEFT and passes explicit position ids (0, 1, ... from each prompt's first real
token), so a prompt gets the same greedy answer whatever else is in its batch. Prompts are tokenized
with the tokenizer's special tokens (LLaMA-style tokenizers add BOS), decoding drops special tokens,
generation of a sequence ends at EOS or at the first stop string, and the returned text is cut at the
first stop string.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList


class _StopOnStrings(StoppingCriteria):
    """Marks a sequence finished once its generated text contains any of the stop strings."""

    def __init__(self, tokenizer, stops: Sequence[str], prompt_len: int):
        self.tokenizer = tokenizer
        self.stops = list(stops)
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.decode(input_ids[:, self.prompt_len :].tolist(), skip_special_tokens=True)
        done = [any(s in t for s in self.stops) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def decode_continuation(tokenizer, prompt_ids, new_ids) -> str:
    """The text generated after the prompt, cut from the decoded prompt + continuation at the character
    level: decoding the new tokens alone would drop a leading space with LLaMA's tokenizer (and break
    code indentation)."""
    head = tokenizer.decode(prompt_ids, skip_special_tokens=True)
    full = tokenizer.decode(list(prompt_ids) + list(new_ids), skip_special_tokens=True)
    return full[len(head) :] if full.startswith(head) else tokenizer.decode(new_ids, skip_special_tokens=True)


def truncate_at_stop(text: str, stops: Sequence[str]) -> str:
    """`text` up to (not including) the earliest occurrence of any stop string."""
    cut = len(text)
    for s in stops:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


def _left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
    # Position 0 at each prompt's first real token; pads get 0 (they are masked out anyway).
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 8,
    stop: str | Sequence[str] | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    progress: bool = False,
    encode: Callable[[str], list[int]] | None = None,
) -> list[str]:
    """Generate a completion for every prompt; returns the new text only, in the order of `prompts`.

    Greedy by default. With `do_sample`, sampling uses `temperature` and nucleus `top_p` (no top-k), from a
    torch RNG seeded with `seed` that leaves the global RNG state untouched. `stop` is one string or a
    list; a sequence stops generating once its text contains one, and its output is cut there. The
    model's own generation_config (e.g. LLaMA-2's sampling defaults) is ignored. `encode`: how a prompt
    becomes token ids (default: the tokenizer, adding its special tokens).
    """
    if isinstance(stop, str):
        stop = [stop]
    stops = [s for s in (stop or []) if s]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not prompts:
        return []

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_id = tokenizer.eos_token_id
    device = next(model.parameters()).device
    encoded = [encode(p) if encode else tokenizer(p)["input_ids"] for p in prompts]
    # Longest first, so each batch holds prompts of similar length (less padding); order restored below.
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))

    gen_kwargs = {"do_sample": do_sample}
    if do_sample:
        gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=tokenizer.bos_token_id,
        **gen_kwargs,
    )

    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if progress:
        try:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="generate", unit="batch")
        except ImportError:  # pragma: no cover - tqdm ships with transformers' dependencies
            pass

    outputs: list[str | None] = [None] * len(prompts)
    was_training = model.training
    model.eval()
    rng_devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=rng_devices), torch.inference_mode():
            torch.manual_seed(seed)
            for batch in batches:
                ids, mask, pos = _left_pad([encoded[i] for i in batch], pad_id)
                ids, mask, pos = ids.to(device), mask.to(device), pos.to(device)
                criteria = StoppingCriteriaList()
                if stops:
                    criteria.append(_StopOnStrings(tokenizer, stops, ids.shape[1]))
                out = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=pos,
                    generation_config=config,
                    stopping_criteria=criteria,
                )
                new = out[:, ids.shape[1] :].tolist()
                for row, i in zip(new, batch, strict=True):
                    if eos_id is not None and eos_id in row:
                        row = row[: row.index(eos_id)]
                    outputs[i] = truncate_at_stop(decode_continuation(tokenizer, encoded[i], row), stops)
    finally:
        model.train(was_training)
    return outputs  # type: ignore[return-value]
