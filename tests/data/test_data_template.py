"""The Tülu chat template as text: exact strings, and chat_prompt == the training text before an answer."""

import pytest

from spiel.data import chat_prompt, render_messages

CONV = [
    {"role": "system", "content": "Be brief. "},
    {"role": "user", "content": "  Hi\n"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": " Goodbye.\n"},
]


def test_render_exact_text():
    assert render_messages(CONV) == (
        "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello.</s>\n"
        "<|user|>\nBye\n<|assistant|>\nGoodbye.</s>"
    )


def test_render_uses_given_eos():
    assert render_messages(CONV[1:3], eos_token="<|end|>") == "<|user|>\nHi\n<|assistant|>\nHello.<|end|>"


def test_chat_prompt_is_training_prefix_of_the_last_answer():
    prompt = chat_prompt(CONV)
    assert prompt == (
        "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello.</s>\n<|user|>\nBye\n<|assistant|>\n"
    )
    # what the model is trained to produce right after this prefix is the answer and EOS
    assert render_messages(CONV) == prompt + "Goodbye.</s>"


def test_chat_prompt_without_answer_and_single_turn():
    assert chat_prompt([{"role": "user", "content": "Q?"}]) == "<|user|>\nQ?\n<|assistant|>\n"
    assert chat_prompt(CONV[:4]) == chat_prompt(CONV)


def test_unknown_role_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown message role 'human'"):
        render_messages([{"role": "human", "content": "x"}])
