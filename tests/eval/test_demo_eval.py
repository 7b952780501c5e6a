"""The demo benchmark: spiel.eval.demo.evaluate_demo."""

from __future__ import annotations

import json

import pytest
import torch

import spiel.eval.demo as demo
from spiel.data.template import chat_prompt
from spiel.testing import DEMO_DIR, tiny_model, tiny_tokenizer
from tests.helpers.script_loader import load_script


def test_default_path_is_the_shipped_heldout():
    assert demo.DEMO_HELDOUT == DEMO_DIR / "heldout.jsonl"


def fake_generate(answer_fn, seen):
    def gen(model, tokenizer, prompts, max_new_tokens, batch_size=8, **kw):
        seen.extend(prompts)
        return [answer_fn(i) for i in range(len(prompts))]

    return gen


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_prompts_follow_the_checkpoints_chat_template(monkeypatch):
    """A tokenizer with the Tülu template (spiel-train's final/ after data.template=tulu) or none is prompted
    in the Tülu format with BOS added; one with another template (data.template=model keeps the model's own)
    gets that template's prompt, tokenized without added special tokens, as training tokenized it."""
    records = demo.load_demo(limit=3)
    for template in ("tulu", None):
        tok = tiny_tokenizer()
        if template is None:
            tok.chat_template = None
        fmt, prompts, encode = demo.demo_prompts(records, tok)
        assert fmt == "tulu" and encode is None and prompts == [chat_prompt(r["messages"]) for r in records]
    tok = tiny_tokenizer()
    tok.chat_template = CHATML
    fmt, prompts, encode = demo.demo_prompts(records, tok)
    user = records[0]["messages"][0]["content"]
    assert fmt == "model" and prompts[0] == f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    assert encode(prompts[0]) == tok(prompts[0], add_special_tokens=False)["input_ids"]
    assert encode(prompts[0])[0] != tok.bos_token_id  # no BOS the template did not write
    seen: list[str] = []
    monkeypatch.setattr(demo, "generate", fake_generate(lambda i: "", seen))
    assert demo.evaluate_demo(None, tok, limit=3)["prompt_format"] == "model" and seen == prompts


def test_exact_match_scoring(monkeypatch):
    records = demo.load_demo(limit=12)
    refs = [r["messages"][-1]["content"] for r in records]
    seen: list[str] = []
    # Surrounding whitespace is ignored; anything else wrong is wrong.
    monkeypatch.setattr(demo, "generate", fake_generate(lambda i: f" {refs[i]}\n", seen))
    res = demo.evaluate_demo(None, tiny_tokenizer(), limit=12)
    assert res["exact_match"] == 1.0 and res["num_examples"] == 12
    assert seen == [chat_prompt(r["messages"]) for r in records]
    assert all(p.endswith("<|assistant|>\n") and refs[i] not in p.split("\n")[-1] for i, p in enumerate(seen))

    monkeypatch.setattr(demo, "generate", fake_generate(lambda i: refs[i] if i % 3 else refs[i] + ".", []))
    res = demo.evaluate_demo(None, tiny_tokenizer(), limit=12)
    assert res["exact_match"] == pytest.approx(8 / 12)
    assert [p["correct"] for p in res["predictions"]] == [i % 3 != 0 for i in range(12)]
    assert {p["skill"] for p in res["predictions"]} == set(res["per_skill"])
    by_skill = {}
    for p in res["predictions"]:
        by_skill.setdefault(p["skill"], []).append(p["correct"])
    assert res["per_skill"] == {k: sum(v) / len(v) for k, v in by_skill.items()}


def test_bad_record_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = {
        "id": "x-copy",
        "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "a"}],
    }
    path.write_text(
        json.dumps(good) + "\n" + json.dumps({"id": "y", "messages": [good["messages"][0]]}) + "\n"
    )
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        demo.load_demo(path)


def test_base_model_does_not_know_the_chat_format():
    res = demo.evaluate_demo(tiny_model(), tiny_tokenizer(), limit=48, batch_size=16)
    assert res["num_examples"] == 48 and len(res["predictions"]) == 48
    assert res["exact_match"] <= 0.25


def load_finetune_script():
    return load_script("demo_full_finetune")


def test_finetune_trains_only_the_answer_and_eos():
    # demo_full_finetune encodes with spiel.data and batches with the package's collator (its plain loop)
    from spiel.data.collator import DataCollatorForSpiel
    from spiel.data.encode import encode_many

    tok = tiny_tokenizer()
    msgs = [
        {"role": "user", "content": "Reverse the letters of abc."},
        {"role": "assistant", "content": "cba"},
    ]
    example = encode_many([msgs], tok)[0]
    ids, labels = example["input_ids"], example["labels"]
    assert tok.decode(ids) == "<s><|user|>\nReverse the letters of abc.\n<|assistant|>\ncba</s>"
    trained = [t for t, lab in zip(ids, labels, strict=True) if lab != -100]
    assert trained == [t for t, lab in zip(ids, labels, strict=True) if lab == t]
    assert tok.decode(trained) == "cba</s>"
    batch = DataCollatorForSpiel(pad_token_id=tok.pad_token_id)(
        [example, {"input_ids": ids[:3], "labels": labels[:3]}]
    )
    assert batch["input_ids"][1, 3:].eq(tok.pad_token_id).all() and batch["labels"][1, 3:].eq(-100).all()
    assert batch["attention_mask"].sum(1).tolist() == [len(ids), 3]


@pytest.mark.slow
def test_short_full_finetune_learns_the_demo_task():
    ft = load_finetune_script()
    model, tok = tiny_model(), tiny_tokenizer()
    torch.manual_seed(0)
    ft.finetune(
        model, tok, demo.load_demo(DEMO_DIR / "train.jsonl"), steps=120, batch_size=16, lr=1e-3, seed=0
    )
    res = demo.evaluate_demo(model, tok, limit=60)
    assert res["exact_match"] >= 0.5
