"""Label masking, token by token: only assistant content and its EOS are trainable."""

import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from spiel.data import encode_messages, encode_prompt_completion, render_messages
from spiel.data.encode import IGNORE_INDEX
from tests.helpers.paths import DATA_FIXTURES


def char_tokenizer():
    """One token per character, BOS added, "</s>" a special token: positions are easy to predict."""
    return PreTrainedTokenizerFast(
        tokenizer_file=str(DATA_FIXTURES / "char_tokenizer.json"),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )


def bpe_tokenizer(style):
    """A small trained BPE. "bytelevel": GPT-2 style, no BOS. "metaspace": LLaMA/sentencepiece style
    ("▁" for spaces, BOS added, "\n" a token of its own as LLaMA's byte token <0x0A> is).
    "merging": like metaspace but free to merge across "\n" (unlike LLaMA)."""
    corpus = [
        render_messages(json.loads(line)["messages"]) for line in open(DATA_FIXTURES / "tulu_messages.jsonl")
    ]
    tk = Tokenizer(models.BPE(unk_token="<unk>" if style == "metaspace" else None))
    if style == "bytelevel":
        tk.pre_tokenizer, tk.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
        alphabet, specials = pre_tokenizers.ByteLevel.alphabet(), ["</s>", "<pad>"]
    else:
        meta = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        newline = pre_tokenizers.Split("\n", behavior="isolated")
        tk.pre_tokenizer = meta if style == "merging" else pre_tokenizers.Sequence([newline, meta])
        tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet, specials = [], ["<unk>", "<s>", "</s>", "<pad>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=alphabet)
    tk.train_from_iterator(corpus * 20 + [CONV_TEXT] * 20, trainer)
    if style != "bytelevel":
        tk.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tk.token_to_id("<s>"))]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
        )
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="</s>", pad_token="<pad>")


SYS, U1, A1, U2, A2 = "Be brief.", "What is 2+2?", "It is 4.", "And 3+3?", "6"
CONV = [
    {"role": "system", "content": SYS},
    {"role": "user", "content": U1},
    {"role": "assistant", "content": A1},
    {"role": "user", "content": U2},
    {"role": "assistant", "content": A2},
]
# The training text in pieces, each marked trainable or not, written out by hand (not by the template code).
PIECES = [
    ("<|system|>\n" + SYS + "\n<|user|>\n" + U1 + "\n<|assistant|>\n", False),
    (A1, True),
    ("</s>", True),
    ("\n<|user|>\n" + U2 + "\n<|assistant|>\n", False),
    (A2, True),
    ("</s>", True),
]


CONV_TEXT = "".join(text for text, _ in PIECES)


def expected_char_tokens():
    """(token, trainable) per position for the char tokenizer: BOS, then characters, EOS whole."""
    out = [("<s>", False)]
    for text, trainable in PIECES:
        out += [(text, trainable)] if text == "</s>" else [(c, trainable) for c in text]
    return out


def test_exactly_assistant_content_and_eos_are_trainable():
    tok = char_tokenizer()
    enc = encode_messages(CONV, tok, max_seq_len=2048)
    expected = expected_char_tokens()
    assert tok.convert_ids_to_tokens(enc["input_ids"]) == [t for t, _ in expected]
    for pos, ((token, trainable), ids, label) in enumerate(
        zip(expected, enc["input_ids"], enc["labels"], strict=True)
    ):
        assert label == (ids if trainable else IGNORE_INDEX), f"position {pos} ({token!r})"
    trained = [
        t for t, (_, lab) in zip(tok.convert_ids_to_tokens(enc["input_ids"]), expected, strict=True) if lab
    ]
    assert "".join(trained) == A1 + "</s>" + A2 + "</s>"
    assert enc["input_ids"][0] == tok.bos_token_id
    assert enc["labels"].count(tok.eos_token_id) == 2  # EOS is the special token, not "<", "/", "s", ">"


def test_truncation_inside_an_assistant_turn_keeps_the_trainable_prefix():
    tok = char_tokenizer()
    full = expected_char_tokens()
    second_answer_start = len(full) - len(A2) - 1
    cut = second_answer_start + 1  # one token of the second answer survives, its EOS does not
    enc = encode_messages(CONV, tok, max_seq_len=cut)
    assert len(enc["input_ids"]) == cut
    want = [lab for _, lab in full[:cut]]
    assert [lab != IGNORE_INDEX for lab in enc["labels"]] == want
    assert enc["labels"][-1] == enc["input_ids"][-1]  # the surviving first token of A2 is trained


def test_truncation_before_any_assistant_token_leaves_nothing_trainable():
    tok = char_tokenizer()
    first_answer_start = 1 + len(PIECES[0][0])  # BOS + one token per character
    enc = encode_messages(CONV, tok, max_seq_len=first_answer_start)  # ends right after "<|assistant|>\n"
    assert len(enc["input_ids"]) == first_answer_start
    assert all(lab == IGNORE_INDEX for lab in enc["labels"])


@pytest.mark.parametrize("style", ["bytelevel", "metaspace"])
def test_bpe_tokenizers_train_exactly_the_answers(style):
    tok = bpe_tokenizer(style)
    enc = encode_messages(CONV, tok, max_seq_len=2048)
    assert enc["input_ids"] == tok(render_messages(CONV))["input_ids"]
    assert (enc["input_ids"][0] == tok.bos_token_id) == (style != "bytelevel")
    assert enc["labels"][0] == IGNORE_INDEX
    # gather contiguous trainable spans and decode each
    spans, cur = [], []
    for ids, lab in zip(enc["input_ids"], enc["labels"], strict=True):
        if lab != IGNORE_INDEX:
            assert lab == ids
            cur.append(ids)
        elif cur:
            spans.append(cur)
            cur = []
    if cur:
        spans.append(cur)
    assert [tok.decode(s) for s in spans] == [A1 + "</s>", A2 + "</s>"]


def test_merges_across_the_header_are_warned_about(caplog):
    import spiel.data.encode as encode

    encode._warned_boundary = False
    tok = bpe_tokenizer("merging")
    with caplog.at_level("WARNING", logger="spiel.data.encode"):
        encode_messages(CONV, tok)
    assert "merges tokens across" in caplog.text
    encode._warned_boundary = False
    with caplog.at_level("WARNING", logger="spiel.data.encode"):
        caplog.clear()
        encode_messages(CONV, bpe_tokenizer("metaspace"))
    assert "merges tokens across" not in caplog.text


def test_prompt_completion_format():
    tok = char_tokenizer()
    enc = encode_prompt_completion("Q: 1+1=", "2", tok, max_seq_len=64)
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert "".join(tokens) == "<s>Q: 1+1= 2</s>"  # a space is inserted at a whitespace-free join
    trained = [t for t, lab in zip(tokens, enc["labels"], strict=True) if lab != IGNORE_INDEX]
    assert trained == [" ", "2", "</s>"]  # everything past the tokenized prompt, as the reference does
    enc2 = encode_prompt_completion("Say:\n", "yes", tok, max_seq_len=64)
    assert "".join(tok.convert_ids_to_tokens(enc2["input_ids"])) == "<s>Say:\nyes</s>"
    assert [
        t
        for t, lab in zip(tok.convert_ids_to_tokens(enc2["input_ids"]), enc2["labels"], strict=True)
        if lab != IGNORE_INDEX
    ] == ["y", "e", "s", "</s>"]


def test_tokenizer_without_eos_is_refused():
    tok = char_tokenizer()
    tok.eos_token = None
    with pytest.raises(ValueError, match="no eos_token"):
        encode_messages(CONV, tok)


def test_chat_prompt_tokens_are_what_precedes_the_trained_answer():
    tok = char_tokenizer()
    enc = encode_messages(CONV, tok)
    last_answer_start = len(enc["labels"]) - len(A2) - 1
    from spiel.data import chat_prompt

    assert tok(chat_prompt(CONV))["input_ids"] == enc["input_ids"][:last_answer_start]
    assert (
        enc["labels"][last_answer_start - 1] == IGNORE_INDEX
        and enc["labels"][last_answer_start] != IGNORE_INDEX
    )


def test_an_example_is_trainable_when_any_label_is_not_masked():
    from spiel.data.encode import has_trainable

    assert has_trainable([IGNORE_INDEX, IGNORE_INDEX, 17, IGNORE_INDEX])
    assert not has_trainable([IGNORE_INDEX] * 4)
    assert not has_trainable([])
