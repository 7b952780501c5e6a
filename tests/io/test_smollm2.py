"""model=smollm2-135m (SmolLM2-135M-Instruct, byte-level BPE, EOS "<|im_end|>") under spiel's Tülu format:
assistant-only masks exact token for token, the Tülu template attachable for serving, TyDiQA's prompt ids,
and a trained delta that exports and chats through transformers.pipeline with that template.

These need the converted model in the cache, which the first use of model=smollm2-135m creates (tests never
download); without it they are skipped. The fetch-and-convert path itself is tested with a fake wheel in
test_packaged_model.py, which always runs."""

from __future__ import annotations

import pytest
import torch

from spiel.data.encode import IGNORE_INDEX, encode_messages
from spiel.data.template import ASSISTANT_HEADER, chat_prompt, render_turn
from spiel.io.packaged_model import CHECKSUMS, cache_dir

ALIAS = "smollm2-135m"
pytestmark = [
    pytest.mark.skipif(
        not (cache_dir(ALIAS) / CHECKSUMS).is_file(),
        reason=f"model={ALIAS} is not in the cache ({cache_dir(ALIAS)}); run e.g. `spiel-train "
        f"model={ALIAS} debug=smoke` once to fetch it (tests never download)",
    ),
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning"),
]

CONVERSATIONS = [
    [{"role": "user", "content": "Convert bah to uppercase."}, {"role": "assistant", "content": "BAH"}],
    [
        {"role": "system", "content": "  Be brief. "},
        {"role": "user", "content": "Hi\n"},
        {"role": "assistant", "content": " Hello!\n"},
        {"role": "user", "content": "Été, 漢字 and <|user|> or </s>?"},
        {"role": "assistant", "content": "1 2  3\n\nfour 🙂"},
    ],
    [
        {"role": "user", "content": "What is 12 + 30?"},
        {"role": "assistant", "content": "42"},
        {"role": "user", "content": "Sort: c a b"},
        {"role": "assistant", "content": "a b c"},
    ],
]


@pytest.fixture(scope="module")
def tok():
    from spiel.io.base_model import load_tokenizer

    return load_tokenizer(ALIAS)


def _expected_labels(messages, tok) -> tuple[list[int], list[int]]:
    """Token ids of the rendered text and the labels an exact assistant-only mask gives them, from the
    tokenizer's character offsets: a token is trained iff it lies inside an assistant turn's content + EOS."""
    eos = tok.eos_token
    text, spans = "", []
    for m in messages:
        if m["role"] == "assistant":
            start = len(text) + len(ASSISTANT_HEADER)
            spans.append((start, start + len(m["content"].strip()) + len(eos)))
        text += render_turn(m, eos)
    text = text.strip()
    enc = tok(text, return_offsets_mapping=True)
    labels = []
    for token, (s, e) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        inside = any(a <= s and e <= b for a, b in spans)
        assert inside or not any(s < a < e or s < b < e for a, b in spans), (
            "a token straddles a span boundary"
        )
        labels.append(token if inside else IGNORE_INDEX)
    return enc["input_ids"], labels


@pytest.mark.parametrize(
    "messages", CONVERSATIONS, ids=["one-turn", "system-unicode-whitespace", "two-turns"]
)
def test_assistant_only_mask_is_exact_token_for_token(tok, messages):
    assert tok.eos_token == "<|im_end|>" and tok.bos_token_id not in tok("x")["input_ids"]  # no BOS added
    ids, labels = _expected_labels(messages, tok)
    got = encode_messages(messages, tok, max_seq_len=4096)
    assert got["input_ids"] == ids
    assert got["labels"] == labels
    trained = [t for t in got["labels"] if t != IGNORE_INDEX]
    answers = [m["content"].strip() for m in messages if m["role"] == "assistant"]
    assert tok.decode(trained) == "<|im_end|>".join(answers) + "<|im_end|>"


def test_tulu_template_attaches_and_renders_the_training_and_prompt_ids(tok):
    import copy

    from spiel.data.chat_template import attach_chat_template

    t = attach_chat_template(copy.deepcopy(tok))
    for messages in CONVERSATIONS:
        rendered = t.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        assert list(rendered) == encode_messages(messages, tok, max_seq_len=4096)["input_ids"]
        prompt = t.apply_chat_template(
            messages[:-1], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        assert list(prompt) == tok(chat_prompt(messages, eos_token=tok.eos_token))["input_ids"]


def test_tydiqa_prompt_ids_and_passage_cut_with_a_byte_level_tokenizer(tok):
    from spiel.eval.tydiqa import encode_prompt, truncate_context

    prompt = "Answer the question.\n\nPassage: Ünïcode text, 漢字.\nQuestion: What?\nAnswer:"
    assert encode_prompt(tok, prompt) == tok(prompt)["input_ids"]  # no literal BOS: tokenized as one input
    passage = "The quick brown fox jumps over the lazy dog. " * 20
    cut = truncate_context(tok, passage, 10)
    assert passage.startswith(cut) and len(tok(cut)["input_ids"]) == 10


@pytest.mark.slow
def test_trained_delta_exports_and_chats_through_a_pipeline(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    from spiel.cli.export import export
    from spiel.io.base_model import load_base_model
    from spiel.model.spiel_model import SpielModel
    from tests.helpers.runs import SMALL, SPIEL_FAST, only_run_dir, run_cli

    assert (
        run_cli(
            [
                f"output_root={tmp_path / 'runs'}",
                f"model={ALIAS}",
                *SMALL,
                *SPIEL_FAST,
                "max_steps=2",
                "method.rank_equiv=1",
            ]
        )
        == 0
    )
    final = only_run_dir(tmp_path / "runs") / "final"
    out = export(final, tmp_path / "exported", dtype="float32")
    ids = torch.tensor([encode_messages(CONVERSATIONS[0], AutoTokenizer.from_pretrained(out))["input_ids"]])
    with torch.no_grad():
        expected = SpielModel.from_pretrained(load_base_model(ALIAS, dtype="float32", device="cpu"), final)(
            ids
        ).logits
        torch.testing.assert_close(
            AutoModelForCausalLM.from_pretrained(out)(ids).logits, expected, rtol=1e-4, atol=1e-4
        )

    chat = pipeline("text-generation", model=str(out), device="cpu")
    question = CONVERSATIONS[0][:1]
    rendered = chat.tokenizer.apply_chat_template(
        question, add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    assert list(rendered) == chat.tokenizer(chat_prompt(question, eos_token="<|im_end|>"))["input_ids"]
    reply = chat(question, max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert reply[:-1] == question and reply[-1]["role"] == "assistant"
