"""spiel-eval protocol pieces without a model: prompts (string for string), sampling, answer extraction,
metrics, and the missing-data message. Fixtures in tests/fixtures/eval/ use the benchmarks' real layouts."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from spiel.eval import bbh, gsm, mmlu, tydiqa
from spiel.eval.data import BenchDataError, MissingDataError
from spiel.eval.metrics import exact_match, mean_pass_at_k, pass_at_k, squad_f1, squad_scores
from tests.helpers.paths import EVAL_FIXTURES


class CharTokenizer:
    """One token per character, BOS (id 1, text "<s>") added by default: enough to test length logic."""

    bos_token, bos_token_id = "<s>", 1

    def encode(self, text, add_special_tokens=True):
        return ([1] if add_special_tokens else []) + [ord(c) + 10 for c in text]

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": self.encode(text, add_special_tokens)}

    def decode(self, ids):
        return "".join("<s>" if i == 1 else chr(i - 10) for i in ids)


# ---------------------------------------------------------------- MMLU


def test_mmlu_prompt_matches_the_protocol_string_for_string():
    dev = mmlu.read_rows(EVAL_FIXTURES / "mmlu/dev/abstract_algebra_dev.csv")
    test = mmlu.read_rows(EVAL_FIXTURES / "mmlu/test/abstract_algebra_test.csv")
    prompt = mmlu.build_prompt(CharTokenizer(), dev[:2], "abstract_algebra", test[0], ntrain=2)
    assert prompt == (
        "The following are multiple choice questions (with answers) about  abstract algebra.\n\n"
        "Find the order of the element 2 in Z_4.\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n"
        "How many elements does the group Z_2 x Z_3 have?\nA. 2\nB. 3\nC. 5\nD. 6\nAnswer: D\n\n"
        "Find the characteristic of the ring Z_3.\nA. 0\nB. 3\nC. 6\nD. 9\nAnswer:"
    )


def test_mmlu_drops_shots_until_the_prompt_fits():
    dev = mmlu.read_rows(EVAL_FIXTURES / "mmlu/dev/abstract_algebra_dev.csv")
    row = mmlu.read_rows(EVAL_FIXTURES / "mmlu/test/abstract_algebra_test.csv")[0]
    full = mmlu.build_prompt(
        CharTokenizer(), dev, "abstract_algebra", row, ntrain=5, max_prompt_tokens=10_000
    )
    assert full.count("Answer:") == 6
    fitted = mmlu.build_prompt(
        CharTokenizer(), dev, "abstract_algebra", row, ntrain=5, max_prompt_tokens=len(full) - 1
    )
    assert fitted.count("Answer:") == 5 and len(fitted) <= len(full) - 1  # exactly one shot dropped
    zero = mmlu.build_prompt(CharTokenizer(), dev, "abstract_algebra", row, ntrain=5, max_prompt_tokens=1)
    assert zero.count("Answer:") == 1  # stops at 0 shots rather than looping


def test_mmlu_pandas_reader_keeps_the_reference_cell_parsing_and_csv_keeps_text():
    pd_rows = mmlu.read_rows(EVAL_FIXTURES / "mmlu/dev/high_school_geography_dev.csv", "pandas")
    raw = mmlu.read_rows(EVAL_FIXTURES / "mmlu/dev/high_school_geography_dev.csv", "csv")
    # pandas infers numeric columns ("11", "0.50" -> 11.0, 0.5) and reads "None" as NaN
    assert mmlu.format_example(pd_rows[0], True).split("\n")[1:5] == ["A. 11.0", "B. 9.0", "C. 7.0", "D. nan"]
    assert mmlu.format_example(pd_rows[1], False).split("\n")[1] == "A. 0.5"
    assert mmlu.format_example(raw[0], True).split("\n")[1:5] == ["A. 11", "B. 9", "C. 7", "D. None"]
    assert mmlu.format_example(raw[1], False).split("\n")[1] == "A. 0.50"


def test_mmlu_subjects_sorted_and_metrics_grouped_like_the_reference():
    assert mmlu.subjects(EVAL_FIXTURES) == ["abstract_algebra", "high_school_geography"]
    m = mmlu.mmlu_metrics({"abstract_algebra": [True, False, False], "high_school_geography": [True, True]})
    assert m["average_acc"] == pytest.approx(3 / 5)  # micro average over questions
    assert m["subcat_acc"] == {"geography": 1.0, "math": pytest.approx(1 / 3)}
    assert m["cat_acc"] == {"STEM": pytest.approx(1 / 3), "social sciences": 1.0}


# ---------------------------------------------------------------- GSM


def test_gsm_prompt_gold_and_sample():
    rows = gsm.load_gsm(EVAL_FIXTURES, max_num_examples=None)
    assert [r["answer"] for r in rows[:2]] == ["7", "14400"]  # after "####", commas removed
    prompt = gsm.build_prompt(rows[0]["question"])
    assert prompt.startswith(
        "Answer the following questions.\n\n"
        "Question: There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they "
        "are done, there will be 21 trees. How many trees did the grove workers plant today?\n"
        "Answer: There are 15 trees originally. Then there were 21 trees after some more were planted. So there "
        "must have been 21 - 15 = 6. So the answer is 6.\n\n"
        "Question: If there are 3 cars"
    )
    assert prompt.endswith(
        "So the answer is 8.\n\nQuestion: Tom has 3 apples and buys 4 more. How many apples does he have?\nAnswer:"
    )
    assert prompt.count("Question: ") == 9 and prompt.count("So the answer is") == 8
    # the reference's draw: random.seed(42); random.sample(test, n)
    import random

    random.seed(42)
    expected = random.sample(rows, 4)
    assert gsm.load_gsm(EVAL_FIXTURES, max_num_examples=4) == expected


@pytest.mark.parametrize(
    "output, expected",
    [
        (" Tom has 3 + 4 = 7 apples. So the answer is 7.", "7"),
        (" 1,200 * 12 = 14,400 eggs. So the answer is 14,400.", "14400"),
        (" The total is $1,234,567.89 in all.", "1234567.89"),
        (" He runs 2.5 * 4 = 10.0 miles.", "10.0"),
        (" It is .5 of it", ".5"),
        (" The change is -3.5 dollars", "-3.5"),
        (" The change is -3 dollars", "3"),  # the reference's regex keeps a sign only on decimals
        (" I do not know.", " I do not know."),  # no number: the whole output
    ],
)
def test_gsm_answer_extraction(output, expected):
    assert gsm.extract_answer(output) == expected


def test_gsm_exact_match_ignores_case_and_punctuation_only():
    assert exact_match(["14400", "10.0", "1.5"], ["14400", "10", "15"]) == pytest.approx(
        2 / 3
    )  # "1.5" ~ "15"


@pytest.mark.parametrize(
    "gold, accepted",
    [
        ("#### 72", "72"),
        ("x\n#### 1,234,567", "1234567"),
        ("#### -5", "-5"),
        ("#### +3", "+3"),
        ("#### 2.", "2."),
        ("#### .25", ".25"),
        ("#### 0.5", "0.5"),
        ("#### twelve", None),
        ("#### 1.2.3", None),
        ("#### 5 apples", None),
        ("#### -", None),
        ("#### ", None),
    ],
)
def test_gsm_gold_answers_must_be_one_number(tmp_path, gold, accepted):
    """Every form the gold after '####' may take (sign, decimals, thousands commas) loads; anything that is
    not exactly one number is refused naming the line."""
    (tmp_path / "gsm").mkdir()
    lines = [{"question": "q1", "answer": "#### 1"}, {"question": "q2", "answer": gold}]
    (tmp_path / "gsm" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if accepted is None:
        with pytest.raises(
            BenchDataError, match=r"test\.jsonl:2: the answer after '####' is .*, not a number"
        ):
            gsm.load_gsm(tmp_path, max_num_examples=None)
    else:
        assert gsm.load_gsm(tmp_path, max_num_examples=None)[1]["answer"] == accepted


def test_exact_match_is_the_fraction_of_equal_normalized_answers():
    assert exact_match([], []) == 0.0
    assert exact_match(["(A)", "yes", "No"], ["(a)", "Yes!", "no."]) == 1.0
    assert exact_match(["1", "2", "3", "4"], ["1", "2", "3", "5"]) == 0.75
    assert exact_match(["a b"], ["ab"]) == 0.0  # spaces are kept: only case and punctuation are ignored
    with pytest.raises(ValueError, match="2 predictions for 3 references"):
        exact_match(["a", "b"], ["a", "b", "c"])
    with pytest.raises(ValueError, match="3 predictions for 2 references"):
        exact_match(["a", "b", "c"], ["a", "b"])


# ---------------------------------------------------------------- BBH


def test_bbh_prompt_drops_the_canary_lines():
    task_prompt = bbh.load_cot_prompt(EVAL_FIXTURES, "date_understanding")
    assert not task_prompt.startswith("FIXTURE") and task_prompt.startswith("Infer the date from context.")
    prompt = bbh.build_prompt(
        task_prompt, "Today is 3/5/2020. What is the date tomorrow?\nOptions:\n(A) x\n(B) y"
    )
    assert prompt.startswith("Infer the date from context.\n\nQ: Today is 1/2/2020.")
    assert prompt.endswith(
        "A day ago was 07/03/1999. So the answer is (A).\n\n"
        "Q: Today is 3/5/2020. What is the date tomorrow?\nOptions:\n(A) x\n(B) y\nA:"
    )


def test_bbh_sampling_is_in_sorted_task_order_and_independent_of_the_task_subset(tmp_path):
    import random

    full = bbh.load_tasks(EVAL_FIXTURES, max_num_examples_per_task=3)
    assert list(full) == ["boolean_expressions", "date_understanding"]
    rng = random.Random(42)
    for name in sorted(full):
        examples = __import__("json").loads((EVAL_FIXTURES / f"bbh/bbh/{name}.json").read_text())["examples"]
        assert full[name] == rng.sample(examples, 3)
    assert bbh.load_tasks(EVAL_FIXTURES, 3, tasks=["date_understanding"]) == {
        "date_understanding": full["date_understanding"]
    }
    # creation order on disk does not matter
    copy = tmp_path / "bbh"
    (copy / "bbh").mkdir(parents=True)
    for name in reversed(sorted(full)):
        shutil.copy(EVAL_FIXTURES / f"bbh/bbh/{name}.json", copy / "bbh" / f"{name}.json")
    assert bbh.load_tasks(tmp_path, 3) == full


@pytest.mark.parametrize(
    "output, expected",
    [
        (" Let's think step by step.\nnot not True = True. So the answer is (B).", "(B)"),
        (" the answer is False. And the answer is True.", "False"),  # the first match
        (" The answer is 3.5 apples.", "3"),  # (.*?)\. stops at the first period, as the reference
        (" Something else\n\nmore", "Something else"),  # no match: up to the first blank line
        ("  (C)  \n\n", "(C)"),  # no match and nothing after: the stripped output
        (" The answer is  valid . Then", "valid"),  # capital T; the answer is stripped
        (" so the answer is (D).", "(D)"),
        (" the answer is (D)", "the answer is (D)"),  # no period to end it: no match
    ],
)
def test_bbh_answer_extraction(output, expected):
    assert bbh.extract_answer(output) == expected


def test_bbh_exact_match_of_letter_answers():
    preds = [bbh.extract_answer("... So the answer is (B)."), bbh.extract_answer("So the answer is (a).")]
    assert exact_match(preds, ["(B)", "(A)"]) == 1.0
    assert exact_match(preds, ["(A)", "(A)"]) == 0.5


# ---------------------------------------------------------------- TyDiQA


def test_tydiqa_languages_in_the_papers_order_and_one_shot_per_language():
    test, shots, languages = tydiqa.load_tydiqa(EVAL_FIXTURES, n_shot=1, max_num_examples_per_lang=2)
    assert languages == ["english", "finnish", "swahili"]
    assert [ex["lang"] for ex in test] == ["english", "english", "finnish", "finnish", "swahili"]
    assert all(len(v) == 1 for v in shots.values()) and shots["finnish"][0]["id"] == "finnish-9101-0"
    again = tydiqa.load_tydiqa(EVAL_FIXTURES, n_shot=1, max_num_examples_per_lang=2)
    assert (test, shots) == again[:2]


def test_tydiqa_prompt_matches_the_protocol_string_for_string():
    example = {
        "lang": "english",
        "context": "Helsinki is the capital of Finland.",
        "question": "What is the capital?",
    }
    shot = {
        "context": "Paris is the capital of France.",
        "question": "What is the capital of France?",
        "answers": [{"text": "Paris", "answer_start": 0}],
    }
    assert tydiqa.build_prompt("english", example, [shot]) == (
        "Answer the following question based on the information in the given passage.\n\n"
        "Passage: Paris is the capital of France.\nQuestion: What is the capital of France?\nAnswer: Paris\n\n"
        "Passage: Helsinki is the capital of Finland.\nQuestion: What is the capital?\nAnswer:"
    )
    fi = dict(example, lang="finnish")
    assert tydiqa.build_prompt("finnish", fi, []) == (
        "Vastaa seuraavaan kysymykseen annetun kappaleen tiedon perusteella.\n\n"
        "Kappale: Helsinki is the capital of Finland.\nKysymys: What is the capital?\nVastaus:"
    )


def test_tydiqa_context_cut_keeps_the_bos_quirk_and_leaves_short_passages_alone():
    tok = CharTokenizer()
    assert tydiqa.truncate_context(tok, "short passage", 1024) == "short passage"
    cut = tydiqa.truncate_context(tok, "abcdefghij", 5)
    assert cut == "<s>abcd"  # encode adds BOS, 5 tokens kept, decode keeps BOS text


def _sentencepiece_style_tokenizer(reference: bool = False):
    """A LLaMA-2-like tokenizer, whole words as tokens, BOS added. As transformers 5 builds LLaMA-2's:
    spaces become "▁" and one "▁" is prepended at the very start of the input unless the text already
    starts with one (Metaspace, prepend_scheme="first"). ``reference``: as the reference's transformers
    built it from LLaMA-2's tokenizer.json: "▁" prepended to every piece of text between special tokens,
    whatever it starts with."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3}
    for w in ["Passage:", "Hello", "world", "again", "x"]:
        vocab.setdefault("▁" + w, len(vocab))
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    if reference:
        t.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        t.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    else:
        t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    t.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    t.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_tydiqa_cut_passage_gets_the_reference_tokens_with_the_shipped_tokenizer():
    """The tiny model's byte-level tokenizer: one id per character (its byte + 4), BOS 1. By the
    reference's rule the prompt is [BOS] + "Passage: " + [BOS] + the first 7 passage characters."""
    from spiel.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    cut = tydiqa.truncate_context(tok, "Hello world again", 8)
    assert cut == "<s>Hello w"
    by_hand = [1] + [ord(c) + 4 for c in "Passage: "] + [1] + [ord(c) + 4 for c in "Hello w"]
    assert tok.convert_ids_to_tokens(by_hand)[:3] == ["<s>", "P", "a"]  # the rule "byte + 4" holds
    assert tydiqa.encode_prompt(tok, f"Passage: {cut}") == by_hand


def test_tydiqa_text_after_a_literal_bos_gets_the_reference_tokens_under_transformers_5():
    """A cut passage decodes as "<s> Hello world"; the reference tokenized " Hello world" as an input of its
    own, "▁▁Hello▁world": "▁", "▁Hello", "▁world". transformers 5's LLaMA-style tokenizer alone gives one
    token fewer; encode_prompt gives the reference's ids, and changes nothing for the reference's own."""
    tok, reference = _sentencepiece_style_tokenizer(), _sentencepiece_style_tokenizer(reference=True)
    cut = tydiqa.truncate_context(tok, "Hello world again x", 3)  # BOS and two words kept
    assert cut == "<s> Hello world"
    prompt = f"Passage: {cut}"
    by_hand = tok.convert_tokens_to_ids(["<s>", "▁Passage:", "▁", "<s>", "▁", "▁Hello", "▁world"])
    assert reference(prompt)["input_ids"] == by_hand  # the reference's pipeline
    assert len(tok(prompt)["input_ids"]) == len(by_hand) - 1  # transformers 5 alone: one token fewer
    assert tydiqa.encode_prompt(tok, prompt) == by_hand
    assert tydiqa.encode_prompt(reference, prompt) == by_hand
    assert (
        tydiqa.encode_prompt(tok, "Passage: Hello") == tok("Passage: Hello")["input_ids"]
    )  # uncut: as usual


def test_tydiqa_generates_from_the_reference_tokens(monkeypatch):
    tok = _sentencepiece_style_tokenizer()
    seen = []

    def fake_generate(model, tokenizer, prompts, encode=None, **kwargs):
        seen.extend((p, encode(p)) for p in prompts)
        return [""] * len(prompts)

    monkeypatch.setattr(tydiqa, "generate", fake_generate)
    tydiqa.evaluate_tydiqa(None, tok, EVAL_FIXTURES, max_num_examples_per_lang=1, max_context_length=4)
    assert any("<s>" in p for p, _ in seen)  # some passages were cut
    assert all(got == tydiqa.encode_prompt(tok, p) for p, got in seen)


@pytest.mark.parametrize(
    "pred, gold, f1",
    [
        ("the Gulf of Finland", "Gulf of Finland", 1.0),  # article dropped
        ("Helsinki.", "helsinki", 1.0),  # punctuation and case
        (
            "on the coast",
            "on the coast of the Gulf of Finland",
            2 * 1.0 * (2 / 6) / (1.0 + 2 / 6),
        ),  # "on coast" vs 6 tokens
        ("Turku", "Helsinki", 0.0),
    ],
)
def test_squad_f1(pred, gold, f1):
    assert squad_f1(pred, gold) == pytest.approx(f1)


def test_squad_scores_take_the_best_gold_and_scale_to_100():
    s = squad_scores(
        ["Gulf of Finland", "Turku"],
        [["on the coast of the Gulf of Finland", "the Gulf of Finland"], ["Helsinki"]],
    )
    assert s == {"exact_match": pytest.approx(50.0), "f1": pytest.approx(50.0)}


# ---------------------------------------------------------------- pass@k


@pytest.mark.parametrize(
    "n, c, k", [(20, 0, 1), (20, 3, 1), (20, 3, 5), (20, 19, 5), (20, 20, 10), (5, 2, 5)]
)
def test_pass_at_k_equals_the_closed_form(n, c, k):
    closed = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(closed, abs=1e-12)


def test_pass_at_k_boundaries_and_the_mean_over_problems():
    """k = n is allowed (1 when any passed), k = n + 1 and c outside [0, n] are refused; the mean keeps
    k equal to the smallest n and drops k one past it (hand-computed)."""
    assert pass_at_k(4, 1, 4) == 1.0 and pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 4, 1) == 1.0
    for n, c, k in [(4, 1, 5), (4, -1, 1), (4, 5, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)
    # n = 3 and 4: pass@3 = mean(1 - C(2,3)/C(3,3), 1 - C(3,3)/C(4,3)) = mean(1, 3/4)
    assert mean_pass_at_k([(3, 1), (4, 1)], ks=(1, 3, 4)) == {
        "pass@1": pytest.approx((1 / 3 + 1 / 4) / 2),
        "pass@3": pytest.approx((1 + 3 / 4) / 2),
    }
    assert mean_pass_at_k([], ks=(1,)) == {}


def test_squad_scores_of_nothing_and_of_mismatched_lengths():
    assert squad_scores([], []) == {"exact_match": 0.0, "f1": 0.0}
    assert squad_f1("the", "a") == 0.0  # both only articles: no tokens in common
    with pytest.raises(ValueError, match="1 predictions for 2 references"):
        squad_scores(["x"], [["x"], ["y"]])


def test_pass_at_1_is_the_fraction_passed_and_mean_skips_k_above_n():
    assert pass_at_k(20, 7, 1) == pytest.approx(7 / 20)
    assert mean_pass_at_k([(20, 20), (20, 0), (20, 10)], ks=(1, 50)) == {"pass@1": pytest.approx(0.5)}
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)


# ---------------------------------------------------------------- missing data


@pytest.mark.parametrize(
    "bench, call",
    [
        ("mmlu", lambda d: mmlu.subjects(d)),
        ("gsm", lambda d: gsm.load_gsm(d)),
        ("bbh", lambda d: bbh.task_names(d)),
        ("tydiqa", lambda d: tydiqa.load_tydiqa(d)),
    ],
)
def test_missing_data_names_the_path_and_the_fetch_command(tmp_path, bench, call):
    with pytest.raises(MissingDataError) as err:
        call(tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg and "scripts/prepare_eval_data.py" in msg and f"--bench {bench}" in msg


def test_gsm_verify_counts_the_problems_of_the_full_test_split(tmp_path):
    """1319 non-blank lines pass; one fewer, or no file (0 problems), is named."""
    path = tmp_path / "gsm" / "test.jsonl"
    assert gsm.verify(tmp_path) == [f"gsm: {path} has 0 problems, expected 1319"]
    path.parent.mkdir()
    path.write_text('{"q": 1}\n\n' * 1318)
    assert gsm.verify(tmp_path) == [f"gsm: {path} has 1318 problems, expected 1319"]
    path.write_text('{"q": 1}\n\n' * 1319)
    assert gsm.verify(tmp_path) == []


def test_bbh_names_unknown_tasks_and_missing_prompts_three_at_most(tmp_path):
    with pytest.raises(ValueError, match=r"^bbh: unknown task\(s\) \['nope', 'zzz'\]$"):
        bbh.load_tasks(EVAL_FIXTURES, 3, tasks=["date_understanding", "zzz", "nope"])
    (tmp_path / "bbh" / "bbh").mkdir(parents=True)
    (tmp_path / "bbh" / "cot-prompts").mkdir()
    for name in "abcde":
        (tmp_path / "bbh" / "bbh" / f"{name}.json").write_text("{}")
    (tmp_path / "bbh" / "cot-prompts" / "b.txt").write_text("x")
    assert bbh.verify(tmp_path) == ["bbh: 5 tasks, expected 27", "bbh: no CoT prompt for ['a', 'c', 'd']"]
