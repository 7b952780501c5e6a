"""spiel.eval.generate: left padding, batch-size invariance, EOS, stop strings, seeded sampling."""

from __future__ import annotations

import pytest
import torch

from spiel.eval.generate import generate, truncate_at_stop


def plain(skill: str, x: str) -> str:
    return f"Task: {skill}\nInput: {x}\nOutput: "


# Different lengths, so batches need padding.
PROMPTS = [
    plain("copy", "abc"),
    plain("reverse", "qwertyu"),
    plain("upper", "hello"),
    "<|user|>\nReverse the letters of abc.\n<|assistant|>\n",
    plain("add", "7 + 8"),
    "Task",
]


def manual_greedy(model, tok, prompt: str, n: int) -> str:
    """Reference: unbatched, unpadded greedy decoding with full re-computation every step."""
    ids = torch.tensor([tok(prompt)["input_ids"]])
    new = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(input_ids=ids).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            new.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return tok.decode(new, skip_special_tokens=True)


def test_batch_size_does_not_change_greedy_answers(model, tok):
    one = generate(model, tok, PROMPTS, max_new_tokens=10, batch_size=1)
    four = generate(model, tok, PROMPTS, max_new_tokens=10, batch_size=4)
    all_ = generate(model, tok, PROMPTS, max_new_tokens=10, batch_size=len(PROMPTS))
    assert one == four == all_


def test_left_padded_batch_matches_unpadded_reference(model, tok):
    outs = generate(model, tok, PROMPTS, max_new_tokens=10, batch_size=len(PROMPTS))
    for prompt, out in zip(PROMPTS, outs, strict=True):
        assert out == manual_greedy(model, tok, prompt, 10), prompt


def test_outputs_follow_prompt_order_and_end_at_eos(model, tok):
    # The pretrained model answers the plain format and then emits EOS; without stopping at EOS the
    # text would run on into a new "Task: ..." document.
    # In-distribution inputs (3-6 letters, as in pretraining), of different lengths.
    xs = ["abc", "kitten", "zqw", "pocket", "mnop"]
    outs = generate(model, tok, [plain("copy", x) for x in xs], max_new_tokens=20, batch_size=2)
    assert outs == xs


def test_stop_strings_truncate(model, tok):
    prompt = plain("copy", "abcdef")
    full = generate(model, tok, [prompt], max_new_tokens=10)[0]
    assert full == "abcdef"
    assert generate(model, tok, [prompt], max_new_tokens=10, stop="cd")[0] == "ab"
    assert generate(model, tok, [prompt], max_new_tokens=10, stop=["zz", "e", "bc"])[0] == "a"
    assert generate(model, tok, [prompt], max_new_tokens=10, stop=["zz"])[0] == "abcdef"


def test_truncate_at_stop_takes_the_earliest():
    assert truncate_at_stop("one\n\nQ: two", ["Q:", "\n\n"]) == "one"
    assert truncate_at_stop("abc", []) == "abc"
    assert truncate_at_stop("abc", [""]) == "abc"


def test_max_new_tokens_bounds_output(model, tok):
    out = generate(model, tok, [plain("copy", "abcdef")], max_new_tokens=3)[0]
    assert out == "abc"


def test_sampling_is_seeded_and_leaves_global_rng_alone(model, tok):
    prompts = ["Task", "Input", "Output: "]
    state = torch.random.get_rng_state()
    a = generate(model, tok, prompts, 12, do_sample=True, temperature=2.0, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = generate(model, tok, prompts, 12, do_sample=True, temperature=2.0, seed=1)
    c = generate(model, tok, prompts, 12, do_sample=True, temperature=2.0, seed=2)
    greedy = generate(model, tok, prompts, 12)
    assert a == b
    assert a != c
    assert a != greedy


def test_restores_training_mode_and_handles_empty(model, tok):
    assert generate(model, tok, [], 5) == []
    model.train()
    try:
        generate(model, tok, ["Task"], 2)
        assert model.training
    finally:
        model.eval()
    with pytest.raises(ValueError):
        generate(model, tok, ["Task"], 2, batch_size=0)
