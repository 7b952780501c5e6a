"""Mutation check: do the tests catch plausible one-line bugs in the core, the scoring and the data encoding?

    python scripts/mutants.py              # every mutant (make mutants)
    python scripts/mutants.py --only 3 7   # some of them, by number
    python scripts/mutants.py --list

Each mutant replaces one exact line fragment of one file (the fragment must occur exactly once, so the
list notices when the code moves on) in a temporary copy of the package, runs the tests that guard that
code against the copy, and counts it caught when they fail. The unmutated copy must pass the same tests
first. Prints one line per mutant and the score; exits 1 under 95% caught. Add a mutant with every new
feature: a bug the tests do not catch is a bug a user will.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
THRESHOLD = 0.95

SELECTION = ["tests/core/test_selection.py", "tests/core/test_selection_rules.py"]
OPTIM = ["tests/core/test_optim.py"]
DELTA = ["tests/core/test_delta_layer.py"]
MODEL = ["tests/core/test_model.py", "tests/core/test_model_details.py"]
CHECKS = ["tests/core/test_checkpoint_check.py", "-m", "not slow"]
SCORING = ["tests/eval/test_eval_scoring.py"]
BENCH_DATA = ["tests/eval/test_eval_data_checks.py", "-k", "not spiel_eval"]
ENCODE = ["tests/data/test_data_encode.py"]
DELTA_SETS = ["tests/core/test_delta_sets.py", "tests/core/test_model.py"]
COMPACT = ["tests/core/test_compact_checkpoint.py"]
ELIAS_FANO = ["tests/core/test_elias_fano.py"]


@dataclass(frozen=True)
class Mutant:
    path: str
    original: str
    mutated: str
    tests: list[str]
    what: str


MUTANTS = [
    # -- core: selection ------------------------------------------------------------------------------
    Mutant("spiel/selection/drop.py", "score = score - reference.float()", "score = score + reference.float()",
           SELECTION, "drop='change' with the sign of the reference flipped"),
    Mutant("spiel/selection/selector.py",
           "        if name in self.references:\n            self.references[name] = layer.values.detach().clone()",
           "        if name in self.references:\n            pass", SELECTION, "drop='change' references never refreshed"),
    Mutant("spiel/selection/rules/accumulated_gradient.py", "        self.phases = {name: _Phase() for name in self.layers}",
           "        pass", SELECTION, "AG statistics not reset after a reselection (stale second phase)"),
    Mutant("spiel/selection/selector.py", "layer.grown_at[free] = self.t", "layer.grown_at[free] = 0",
           SELECTION, "growth step not recorded"),
    Mutant("spiel/selection/selector.py", "        self.optimizer.reset_slots(layer.values, free, **seeds)",
           "        pass", SELECTION, "optimizer state of grown slots not reset/seeded"),
    Mutant("spiel/selection/rules/accumulated_gradient.py", "mean = phase.grad_sum / phase.steps", "mean = phase.grad_sum",
           SELECTION, "AG mean gradient not divided by the phase length"),
    Mutant("spiel/selection/rules/accumulated_gradient.py", '"exp_avg": mean * (1 - beta1**age),', '"exp_avg": mean,',
           SELECTION, "AG Adam seed without the bias counter-correction"),
    Mutant("spiel/selection/rules/accumulated_gradient.py", "phase.grad_sq_sum += step_grad * step_grad", "phase.grad_sq_sum += step_grad",
           SELECTION, "AG second moment accumulates g instead of g^2"),
    Mutant("spiel/selection/rules/accumulated_gradient.py", "        return mean.abs()", "        return mean",
           SELECTION, "AG growth ranks signed instead of absolute mean gradients"),
    Mutant("spiel/selection/schedule.py", "                return k\n", "                return k // 2\n",
           SELECTION, "first reselection replaces half instead of all"),
    Mutant("spiel/selection/schedule.py", "(1 + math.cos(math.pi * t / self.total_steps))",
           "(1 + math.sin(math.pi * t / self.total_steps))", SELECTION, "cosine schedule uses sin"),
    # -- core: optimizers -----------------------------------------------------------------------------
    Mutant("spiel/optim/adamw.py", "bias2 = 1 - torch.pow(beta2, age_f)", "bias2 = 1 - torch.pow(beta1, age_f)",
           OPTIM, "AdamW second-moment bias correction with beta1"),
    Mutant("spiel/optim/adamw.py", "p.copy_(p.to(torch.float32).mul_(1 - lr * wd).sub_(update, alpha=lr))",
           "p.copy_(p.to(torch.float32).mul_(1 - wd).sub_(update, alpha=lr))", OPTIM, "AdamW decay not scaled by lr"),
    Mutant("spiel/optim/sm3.py", "u = torch.minimum(row_acc[rows], col_acc[cols]).addcmul_(grad, grad)",
           "u = torch.maximum(row_acc[rows], col_acc[cols]).addcmul_(grad, grad)", OPTIM, "SM3 takes max of the covers"),
    Mutant("spiel/optim/sm3.py", 'row_acc.scatter_reduce_(0, rows, u, "amax", include_self=True)',
           'row_acc.scatter_reduce_(0, rows, u, "sum", include_self=True)', OPTIM, "SM3 row accumulator sums"),
    Mutant("spiel/model/spiel_model.py", "lr=lr, weight_decay=weight_decay, **kwargs)\n\n    def make_selector",
           "lr=lr, **kwargs)\n\n    def make_selector", MODEL, "make_optimizer drops weight_decay for MA"),
    # -- core: delta layer ----------------------------------------------------------------------------
    Mutant("spiel/delta/weights.py", "        dense.view(-1).index_add_(0, indices, values.to(dtype))\n        yield dense",
           "        dense.view(-1).index_add_(0, indices, -values.to(dtype))\n        yield dense",
           DELTA, "delta subtracted on the copying path"),
    Mutant("spiel/delta/weights.py", "        flat.index_put_((indices,), saved)", "        pass",
           DELTA, "in-place W + delta never restored"),
    # -- core: targets, checkpoints -------------------------------------------------------------------
    Mutant("spiel/model/targets.py", "pattern.fullmatch(n)", "pattern.search(n)", MODEL, "regex targets matched by search"),
    Mutant("spiel/checkpoint/fingerprint.py", 'if getattr(module, "merged", False):', "if False:", MODEL,
           "merged layer's fingerprint keeps its delta"),
    Mutant("spiel/checkpoint/fingerprint.py", "if not corr >= FINGERPRINT_MIN_CORRELATION:", "if corr < -1:", MODEL,
           "base-weight fingerprint never compared"),
    Mutant("spiel/model/spiel_model.py", 'layer.grown_at.copy_(entry.get("grown_at", torch.zeros_like(layer.grown_at)))',
           "layer.grown_at.zero_()", MODEL, "grown_at not loaded"),
    Mutant("spiel/checkpoint/read.py", "if bool((steps <= 0).any()):", "if bool((steps < 0).any()):", CHECKS,
           "duplicate indices accepted"),
    Mutant("spiel/checkpoint/read.py", "finite = torch.isfinite(values)", "finite = ~torch.isnan(values)", CHECKS,
           "infinite values accepted"),
    Mutant("spiel/checkpoint/read.py", "            if tuple(t.shape) != (k,):", "            if t.numel() > k:",
           CHECKS, "a values tensor of shape [1] accepted (broadcast)"),
    Mutant("spiel/checkpoint/read.py", "    if unverified and not allow_unverified_base:", "    if False:", CHECKS,
           "checkpoint without fingerprints accepted"),
    # -- named deltas over one base, weighted composition ---------------------------------------------
    Mutant("spiel/model/delta_sets.py", '        layer.values = entry["values"]', "        pass", DELTA_SETS,
           "set_delta swaps the positions but keeps the old values"),
    Mutant("spiel/model/delta_sets.py", "    check_against_base(directory, saved, model)", "    pass", DELTA_SETS,
           "load_delta accepts a delta of another base"),
    Mutant("spiel/model/delta_sets.py", 'entry["values"].detach().float() * weight', 'entry["values"].detach().float()',
           DELTA_SETS, "composition weights ignored"),
    Mutant("spiel/model/delta_sets.py", "            union, inverse = torch.unique(idx, return_inverse=True)",
           "            union, inverse = idx, torch.arange(idx.numel())", DELTA_SETS,
           "shared positions of composed deltas not summed"),
    # -- scoring --------------------------------------------------------------------------------------
    Mutant("spiel/eval/mmlu.py", "correct = pred == str(row[len(CHOICES) + 1]).strip()",
           "correct = pred == str(row[len(CHOICES)]).strip()", SCORING, "MMLU gold read from choice D"),
    Mutant("spiel/eval/mmlu.py", 'tokenizer.encode(" " + c, add_special_tokens=False)[-1]',
           'tokenizer.encode(" " + c, add_special_tokens=False)[0]', SCORING, "MMLU answer ids from the first token"),
    Mutant("spiel/eval/mmlu.py", "pred = CHOICES[int(np.argmax(p))]", "pred = CHOICES[int(np.argmin(p))]", SCORING,
           "MMLU prediction by argmin"),
    Mutant("spiel/eval/gsm.py", "return numbers[-1] if numbers else output", "return numbers[0] if numbers else output",
           SCORING, "GSM takes the first number"),
    Mutant("spiel/eval/gsm.py", '    output = _THOUSANDS.sub(r"\\1\\2", output)', "    output = output", SCORING,
           "GSM prediction keeps thousands commas"),
    Mutant("spiel/eval/gsm.py", 'return _THOUSANDS.sub(r"\\1\\2", answer_field.split("####")[1].strip())',
           'return answer_field.split("####")[1].strip()', SCORING, "GSM gold keeps thousands commas"),
    Mutant("spiel/eval/metrics.py", "return text.lower().translate(_PUNCT_TABLE)", "return text.translate(_PUNCT_TABLE)",
           SCORING, "exact match becomes case-sensitive"),
    Mutant("spiel/eval/metrics.py", "recall = same / len(gold_tokens)", "recall = same / len(pred_tokens)", SCORING,
           "SQuAD recall over the prediction"),
    Mutant("spiel/eval/metrics.py", "em = [max(squad_em(p, g) for g in golds)", "em = [min(squad_em(p, g) for g in golds)",
           SCORING, "SQuAD EM against the worst gold answer"),
    Mutant("spiel/eval/bbh.py", "        return match.group(1).strip()", "        return match.group(0).strip()", SCORING,
           "BBH answer keeps 'the answer is'"),
    Mutant("spiel/eval/demo.py", "correct = out.strip() == ref.strip()", "correct = out == ref", SCORING,
           "demo exact match without stripping"),
    Mutant("spiel/eval/mmlu.py", "if row[-1].strip() not in CHOICES:", "if False:", BENCH_DATA,
           "MMLU answer outside A-D accepted"),
    Mutant("spiel/eval/gsm.py", "        if not _GOLD.fullmatch(gold):", "        if False:", BENCH_DATA,
           "non-numeric GSM gold accepted"),
    # -- the compact (CSR) delta form ------------------------------------------------------------------
    Mutant("spiel/checkpoint/codec.py", "indices = (rows * in_features + cols)", "indices = (rows * out_features + cols)",
           COMPACT, "compact decode strides rows by out_features"),
    Mutant("spiel/checkpoint/codec.py", "not_increasing = same_row & (cols[1:] <= cols[:-1])",
           "not_increasing = same_row & (cols[1:] < cols[:-1])", COMPACT, "a repeated column in a row accepted"),
    Mutant("spiel/checkpoint/codec.py", "    for field in expected:\n        if field not in fields:",
           "    for field in expected:\n        if False:", COMPACT,
           "a compact delta without one of its form's tensors reaches the decode"),
    # -- the compact (Elias–Fano) delta form ----------------------------------------------------------
    Mutant("spiel/checkpoint/elias_fano.py", "    return max(0, (n // k).bit_length() - 1) if k > 0 else 0",
           "    return max(0, (n // k).bit_length() - 2) if k > 0 else 0", ELIAS_FANO, "one low bit too few"),
    Mutant("spiel/checkpoint/elias_fano.py", "    high[(x >> width) + torch.arange(k, dtype=x.dtype)] = 1", "    high[(x >> width)] = 1", ELIAS_FANO,
           "high parts stored without the unary offset"),
    Mutant("spiel/checkpoint/elias_fano.py", "        if size and int(data[-1]) >> (bits - 8 * (size - 1)):",
           "        if False:", ELIAS_FANO, "non-zero padding bits accepted"),
    Mutant("spiel/checkpoint/elias_fano.py", "    if ones.numel() != k:", "    if False:", ELIAS_FANO,
           "a bitmap with a set bit lost or added accepted"),
    Mutant("spiel/checkpoint/elias_fano.py", "    if bool((steps <= 0).any()):", "    if bool((steps < 0).any()):", ELIAS_FANO,
           "a repeated position accepted"),
    # -- data encoding --------------------------------------------------------------------------------
    Mutant("spiel/data/encode.py", "        labels[start:end] = input_ids[start:end]",
           "        labels[start - 1:end] = input_ids[start - 1:end]", ENCODE, "the header's last token is trained"),
    Mutant("spiel/data/encode.py", 'texts += [head, head + message["content"].strip() + eos]',
           'texts += [head, head + message["content"].strip()]', ENCODE, "the assistant's EOS is not trained"),
    Mutant("spiel/data/encode.py", "labels = [IGNORE_INDEX] * min(n_prompt, len(input_ids)) + input_ids[n_prompt:]",
           "labels = list(input_ids)", ENCODE, "prompt/completion: the prompt is trained"),
    Mutant("spiel/data/encode.py", "return any(label != IGNORE_INDEX for label in labels)",
           "return all(label != IGNORE_INDEX for label in labels)", ENCODE, "has_trainable needs every label"),
]


def make_copy(root: Path) -> Path:
    """The package, its tests, configs and scripts under ``root`` (assets linked: tests only read them)."""
    for name in ("spiel", "tests", "scripts"):
        shutil.copytree(REPO / name, root / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copytree(REPO / "configs", root / "configs")
    (root / "assets").symlink_to(REPO / "assets")
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def run_tests(root: Path, tests: list[str]) -> tuple[bool, float]:
    env = dict(os.environ, PYTHONPATH=str(root), HF_HUB_OFFLINE="1", WANDB_MODE="disabled",
               PYTHONDONTWRITEBYTECODE="1")
    start = time.time()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                         cwd=root, env=env, capture_output=True, text=True)
    return out.returncode == 0, time.time() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", type=int, nargs="*", help="mutant numbers (1-based) to run")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args()
    chosen = [(i, m) for i, m in enumerate(MUTANTS, 1) if not args.only or i in args.only]
    if args.list:
        for i, m in chosen:
            print(f"{i:3d} {m.path}: {m.what}")
        return 0
    for i, m in chosen:  # every fragment must still be in the code, exactly once
        count = (REPO / m.path).read_text().count(m.original)
        if count != 1:
            print(f"mutant {i} ({m.what}): {m.path} contains its fragment {count} times; update the list")
            return 2
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="spiel-mutants-") as tmp:
        root = make_copy(Path(tmp))
        check = subprocess.run([sys.executable, "-c", "import spiel; print(spiel.__file__)"], cwd=root,
                               env=dict(os.environ, PYTHONPATH=str(root)), capture_output=True, text=True)
        if not check.stdout.strip().startswith(str(root)):
            print(f"the copy is not what gets imported ({check.stdout.strip()}{check.stderr.strip()})")
            return 2
        suites = {tuple(m.tests) for _, m in chosen}
        for tests in sorted(suites):
            ok, seconds = run_tests(root, list(tests))
            if not ok:
                print(f"the unmutated code fails {' '.join(tests)}: fix that first")
                return 2
            print(f"baseline {' '.join(tests)}: passes ({seconds:.0f} s)", flush=True)
        caught = []
        for i, m in chosen:
            path = root / m.path
            text = path.read_text()
            path.write_text(text.replace(m.original, m.mutated))
            try:
                survived, seconds = run_tests(root, m.tests)
            finally:
                path.write_text(text)
            caught.append(not survived)
            print(f"{i:3d} {'caught  ' if not survived else 'SURVIVED'} {seconds:5.0f} s  {m.path}: {m.what}", flush=True)
    score = sum(caught) / len(caught)
    print(f"mutants caught: {sum(caught)}/{len(caught)} ({100 * score:.1f}%; need {100 * THRESHOLD:.0f}%) "
          f"in {(time.time() - start) / 60:.1f} min")
    return 0 if score >= THRESHOLD else 1


if __name__ == "__main__":
    sys.exit(main())
