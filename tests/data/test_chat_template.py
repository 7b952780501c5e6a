"""The Jinja chat template given to saved tokenizers renders token for token what spiel trains on
(`encode_messages`) and what spiel-eval generates from (`chat_prompt`), or is refused."""

import json

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from spiel.data.chat_template import ChatTemplateError, attach_chat_template, attach_chat_template_or_warn
from spiel.data.encode import encode_messages
from spiel.data.template import chat_prompt, jinja_chat_template
from spiel.testing import DEMO_DIR, TINY_MODEL_DIR, tiny_tokenizer

HELDOUT = [
    json.loads(line)["messages"] for line in (DEMO_DIR / "heldout.jsonl").read_text().splitlines()[:40]
]
MULTI_TURN = [
    {"role": "system", "content": "You answer in one word.\n"},
    {"role": "user", "content": "  Uppercase abc.  "},
    {"role": "assistant", "content": "ABC\n"},
    {"role": "user", "content": "Now sort dcba, please: <|assistant|> is a marker </s>"},
    {"role": "assistant", "content": "\tabcd  "},
]


def sentencepiece_style(prepend: str, post: str = "<s> $A") -> PreTrainedTokenizerFast:
    """A small BPE tokenizer built like LLaMA-2's: "▁" for spaces, BOS added by the post-processor.
    prepend="every_piece": LLaMA-2's legacy normalizer (a "▁" in front of every text piece between special
    tokens); prepend="first": only at the very start of the input (the non-legacy Metaspace scheme)."""
    core = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    if prepend == "every_piece":
        core.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    else:
        core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    core.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    texts = [m["content"] for msgs in HELDOUT for m in msgs] + ["<|system|>\n<|user|>\n<|assistant|>\n"]
    core.train_from_iterator(
        texts,
        trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False),
    )
    ids = {t: core.token_to_id(t) for t in ("<s>", "</s>")}
    core.post_processor = processors.TemplateProcessing(single=post, special_tokens=list(ids.items()))
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def assert_renders_training_ids(tok, conversations):
    for messages in conversations:
        ids = tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        assert ids == encode_messages(messages, tok, max_seq_len=4096)["input_ids"]
        prompt = tok.apply_chat_template(
            messages[:-1], tokenize=True, return_dict=True, add_generation_prompt=True
        )
        assert prompt["input_ids"] == tok(chat_prompt(messages, eos_token=tok.eos_token))["input_ids"]


def test_tiny_tokenizer_template_equals_training_encoding():
    tok = attach_chat_template(tiny_tokenizer())
    assert tok.chat_template == jinja_chat_template(bos=True)
    assert tok.chat_template == (TINY_MODEL_DIR / "chat_template.jinja").read_text()
    assert_renders_training_ids(tok, [*HELDOUT, MULTI_TURN])
    text = tok.apply_chat_template(MULTI_TURN, tokenize=False)
    assert text.startswith(
        "<s><|system|>\nYou answer in one word.\n<|user|>\nUppercase abc.\n<|assistant|>\nABC</s>\n"
    )
    assert text.endswith("<|assistant|>\nabcd</s>")


def test_llama2_style_sentencepiece_template_equals_training_encoding():
    tok = sentencepiece_style("every_piece")
    assert tok("abc")["input_ids"][0] == tok.bos_token_id
    attach_chat_template(tok)
    assert_renders_training_ids(tok, [*HELDOUT, MULTI_TURN])


def test_tokenizer_without_bos_gets_a_template_without_bos():
    tok = sentencepiece_style("every_piece", post="$A")
    attach_chat_template(tok)
    assert tok.chat_template == jinja_chat_template(bos=False)
    assert_renders_training_ids(tok, [*HELDOUT, MULTI_TURN])


def test_tokenizer_that_tokenizes_differently_after_bos_is_refused():
    tok = sentencepiece_style("first")
    with pytest.raises(ChatTemplateError, match="does not render token for token"):
        attach_chat_template(tok)
    assert tok.chat_template is None
    assert attach_chat_template_or_warn(sentencepiece_style("first")) is False


def test_tokenizer_adding_eos_is_refused():
    with pytest.raises(ChatTemplateError, match="other than a leading BOS"):
        attach_chat_template(sentencepiece_style("every_piece", post="<s> $A </s>"))


def test_the_generation_prompt_is_the_training_text_before_the_answer():
    """The prompt text ends with "<|assistant|>\n" right after the last user turn (no trim, no EOS), with
    BOS written once; and a template whose generation prompt alone is wrong is caught by the check."""
    from spiel.data.chat_template import template_mismatch

    tok = attach_chat_template(tiny_tokenizer())
    text = tok.apply_chat_template(MULTI_TURN[:-1], tokenize=False, add_generation_prompt=True)
    assert text == (
        "<s><|system|>\nYou answer in one word.\n<|user|>\nUppercase abc.\n<|assistant|>\nABC</s>\n"
        "<|user|>\nNow sort dcba, please: <|assistant|> is a marker </s>\n<|assistant|>\n"
    )
    assert text == "<s>" + chat_prompt(MULTI_TURN, eos_token="</s>")
    single = [{"role": "user", "content": " Q? "}]
    assert tok.apply_chat_template(single, tokenize=False, add_generation_prompt=True) == (
        "<s><|user|>\nQ?\n<|assistant|>\n"
    )
    assert template_mismatch(tok) is None
    right = jinja_chat_template(bos=True)
    for wrong in (
        right.replace("ns.text + '<|assistant|>\\n' -}}", "(ns.text | trim) + '<|assistant|>\\n' -}}"),
        right.replace("ns.text + '<|assistant|>\\n' -}}", "ns.text + '<|assistant|>' -}}"),
    ):
        assert wrong != right
        tok.chat_template = wrong
        assert template_mismatch(tok).startswith("generation prompt of ")
