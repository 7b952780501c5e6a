"""The shipped tiny base model (assets/tiny-llama) and its loaders in spiel.testing."""

from __future__ import annotations

import json
import random
import re
import time

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from spiel.eval.generate import generate
from spiel.testing import DEMO_DIR, TINY_MODEL_DIR, tiny_model, tiny_tokenizer
from tests.helpers.script_loader import load_script


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_paths_are_absolute_and_exist():
    assert TINY_MODEL_DIR.is_absolute() and DEMO_DIR.is_absolute()
    for name in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "generation_config.json",
        "README.md",
    ]:
        assert (TINY_MODEL_DIR / name).is_file(), name
    assert (DEMO_DIR / "train.jsonl").is_file() and (DEMO_DIR / "heldout.jsonl").is_file()


def test_folder_is_small():
    size = sum(f.stat().st_size for f in TINY_MODEL_DIR.rglob("*") if f.is_file())
    assert size <= 20 * 2**20


def test_config_is_llama_with_gqa(tok):
    cfg = json.loads((TINY_MODEL_DIR / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["num_key_value_heads"] < cfg["num_attention_heads"]
    assert cfg["max_position_embeddings"] >= 512
    assert cfg["vocab_size"] == len(tok)
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )


def test_tiny_model_is_fresh_fp32_eval_copy():
    a, b = tiny_model(), tiny_model()
    assert isinstance(a, LlamaForCausalLM) and a is not b
    assert not a.training
    assert all(p.dtype == torch.float32 for p in a.parameters())
    assert 1e6 < sum(p.numel() for p in a.parameters()) < 6e6
    with torch.no_grad():
        a.model.layers[0].self_attn.q_proj.weight.zero_()
    assert b.model.layers[0].self_attn.q_proj.weight.abs().sum() > 0
    assert tiny_model().model.layers[0].self_attn.q_proj.weight.abs().sum() > 0


def test_loading_is_fast():
    tiny_model()  # warm the cache
    t = time.perf_counter()
    tiny_model()
    tiny_tokenizer()
    assert time.perf_counter() - t < 0.5
    t = time.perf_counter()
    LlamaForCausalLM.from_pretrained(TINY_MODEL_DIR, dtype=torch.float32)
    AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    assert time.perf_counter() - t < 2.0  # cold load from disk (generous: shared CPUs)


def test_tokenizer_special_tokens(tok):
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == ("<s>", "</s>", "<unk>", "<pad>")
    assert tok.pad_token_id != tok.eos_token_id
    assert len({tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.pad_token_id}) == 4
    ids = tok("hi</s>")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert ids[-1] == tok.eos_token_id and len(ids) == 1 + 2 + 1
    assert tok("</s>", add_special_tokens=False)["input_ids"] == [tok.eos_token_id]
    assert len(tok) < 2000


def test_role_markers_are_single_tokens(tok):
    for marker in ["<|system|>", "<|user|>", "<|assistant|>"]:
        ids = tok(marker, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] not in tok.all_special_ids
        assert tok.decode(ids, skip_special_tokens=True) == marker


def test_text_round_trips(tok):
    text = "  Reverse  the letters of abc.\n\tÉté 漢字 😀 <|user|>x</s>"
    ids = tok(text)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=False) == "<s>" + text
    assert tok.decode(ids, skip_special_tokens=True) == text.replace("</s>", "")


def test_chat_template_is_tulu(tok):
    msgs = [
        {"role": "system", "content": " Be brief. "},
        {"role": "user", "content": "Hi\n"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Reverse abc."},
        {"role": "assistant", "content": "cba"},
    ]
    expected = (
        "<s><|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello!</s>\n"
        "<|user|>\nReverse abc.\n<|assistant|>\ncba</s>"
    )
    assert tok.apply_chat_template(msgs, tokenize=False) == expected
    prompt = tok.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    assert prompt == expected[: -len("cba</s>")]
    ids = tok.apply_chat_template(msgs, tokenize=True)["input_ids"]
    assert ids == tok(expected[len("<s>") :])["input_ids"]
    assert ids.count(tok.eos_token_id) == 2


def test_shipped_tokenizer_matches_the_script(tok):
    built = load_script("make_tiny_model").build_tokenizer()
    assert built.get_vocab() == tok.get_vocab()
    assert built.chat_template == tok.chat_template
    text = "<|user|>\nSort dcba.\n<|assistant|>\nabcd</s>"
    assert built(text)["input_ids"] == tok(text)["input_ids"]


def template_regex(template: str):
    pattern = re.escape(template)
    for field, group in (("x", "[a-z]+"), ("y", "[A-Za-z0-9]+"), ("a", r"\d+"), ("b", r"\d+")):
        pattern = pattern.replace(re.escape("{" + field + "}"), f"(?P<{field}>{group})")
    return re.compile(pattern + r"\Z")


def test_pretraining_corpus_is_seeded_correct_and_has_no_instructions():
    mk = load_script("make_tiny_model")
    skills = load_script("demo_skills")
    a, b = mk.corpus_documents(400, seed=3), mk.corpus_documents(400, seed=3)
    assert a == b and a != mk.corpus_documents(400, seed=4)
    instructions = [template_regex(t) for ts in skills.INSTRUCTIONS.values() for t in ts]
    records, seen_skills = 0, set()
    for doc in a:
        assert "<|" not in doc and "?" not in doc  # no chat markers, no questions
        assert not any(r.match(doc) for r in instructions)
        if doc.startswith("Task: "):
            task, inp, out = doc.split("\n")
            skill, x = task.removeprefix("Task: "), inp.removeprefix("Input: ")
            assert out.removeprefix("Output: ") == skills.solve(skill, x)
            records += 1
        else:
            matches = [
                (k, m)
                for k, ts in skills.STATEMENTS.items()
                for t in ts
                if (m := template_regex(t).match(doc))
            ]
            assert len(matches) == 1, doc
            skill, m = matches[0]
            x = f"{m['a']} + {m['b']}" if skill == "add" else m["x"]
            assert m["y"] == skills.solve(skill, x), doc
        seen_skills.add(skill)
    assert seen_skills == set(skills.SKILLS)
    assert 0.25 < records / len(a) < 0.55


def test_solve_examples():
    s = load_script("demo_skills")
    assert [s.solve(k, "cab") for k in ("copy", "reverse", "sort", "upper", "count")] == [
        "cab",
        "bac",
        "abc",
        "CAB",
        "3",
    ]
    assert s.solve("add", "58 + 67") == "125"


def test_model_is_pretrained_on_the_plain_format():
    model, tok = tiny_model(), tiny_tokenizer()
    skills = load_script("demo_skills")
    rng = random.Random(2024)
    items = [(k, skills.sample_input(k, rng)) for k in skills.SKILLS for _ in range(8)]
    outs = generate(model, tok, [f"Task: {k}\nInput: {x}\nOutput: " for k, x in items], 12, batch_size=48)
    correct = [o == skills.solve(k, x) for (k, x), o in zip(items, outs, strict=True)]
    assert sum(correct) / len(correct) >= 0.75
