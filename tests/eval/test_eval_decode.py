"""Generated text is cut from the decoded prompt+output at the character level (the reference's rule), so a
sentencepiece-style tokenizer whose decoder strips one leading space (LLaMA: Metaspace + Strip) does not eat
the first space of a completion: HumanEval's indentation survives."""

from __future__ import annotations

import torch
from transformers import LlamaTokenizer

from spiel.eval.generate import generate


def llama_style_tokenizer():
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for t in [
        "▁",
        "▁▁",
        "▁▁▁",
        "▁▁▁▁",
        "r",
        "e",
        "t",
        "u",
        "n",
        "re",
        "ret",
        "retu",
        "retur",
        "return",
        "▁return",
    ]:
        vocab.setdefault(t, len(vocab))
    merges = [
        ("r", "e"),
        ("re", "t"),
        ("ret", "u"),
        ("retu", "r"),
        ("retur", "n"),
        ("▁", "return"),
        ("▁", "▁"),
        ("▁▁", "▁"),
        ("▁▁", "▁▁"),
    ]
    return LlamaTokenizer(vocab=vocab, merges=merges)


class FixedContinuation(torch.nn.Module):
    """A stand-in LM whose generate() appends the same token ids to every prompt."""

    def __init__(self, new_ids):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.new_ids = torch.tensor(new_ids)

    def generate(self, input_ids, **kwargs):
        return torch.cat([input_ids, self.new_ids.expand(input_ids.shape[0], -1)], dim=1)


def test_leading_spaces_of_a_completion_survive_decoding():
    tok = llama_style_tokenizer()
    prompt = "def f(x):\n"
    full, head = tok.encode(prompt + "    return x"), tok.encode(prompt)
    assert full[: len(head)] == head
    new = full[len(head) :]
    assert tok.decode(new, skip_special_tokens=True) == "   return x"  # the pitfall: one space lost
    out = generate(FixedContinuation(new), tok, [prompt, "x = 1\n" + prompt], max_new_tokens=8, batch_size=2)
    assert out == ["    return x", "    return x"]
