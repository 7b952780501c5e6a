"""Mutation score: do the tests catch one-line bugs that nobody listed? (`make mutants`)

    python scripts/mutants.py                          # a seeded sample sized to fit --budget (60 min)
    python scripts/mutants.py --budget 600 --groups optim data_reader --per-group 8 --seed 1
    python scripts/mutants.py --list                   # the groups, their modules and tests

Cosmic Ray (a mutation tool from PyPI, `pip install -e .[dev]`) generates every mutant of each group's modules
with all its operators (comparisons, arithmetic, boolean and unary operators, numbers, break/continue,
exceptions, ...). Each group's modules are tested against the tests that mirror them (the mapping below),
never the whole suite. The full set does not fit an hour on a 2-core machine, so a seeded random sample of
each group runs: its size is what the group's share of the budget allows at the measured run time of its tests
(unmutated, which must pass first). A group's share is an equal part of the time left, so time a group that
finishes early did not use goes to the groups after it. Everything runs in a temporary copy of the repository,
so an interrupted run never leaves a mutated file behind; a group whose share of the budget is spent is scored
on the mutants that finished (the count is printed).

Prints, per group and in all, the mutants caught (a test failed or timed out) and survived, the diff of
every survivor, and the score over the non-equivalent ones; exits 1 under 90%. A survivor that cannot
change behaviour (an equivalent mutant) goes into EQUIVALENT below with the reason: it is then listed,
and left out of the score. One class is left out before sampling: mutants inside annotations
(``int | None`` -> ``int << None``), which no module here evaluates (all have ``from __future__ import
annotations``; a module without it keeps them, as they then fail at import).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
THRESHOLD = 0.90
PYTEST = [sys.executable, "-m", "pytest", "-x", "-q", "-m", "not slow", "-p", "no:cacheprovider"]

# group: (modules to mutate, the tests that mirror them)
GROUPS = {
    "checkpoint": (
        sorted(
            str(p.relative_to(REPO))
            for p in (REPO / "spiel/checkpoint").glob("*.py")
            if p.name != "__init__.py"
        ),
        [
            "tests/core/test_checkpoint_check.py",
            "tests/core/test_checkpoint_kind.py",
            "tests/core/test_compact_checkpoint.py",
            "tests/core/test_elias_fano.py",
            "tests/core/test_checkpoint_base_fingerprint.py",
        ],
    ),
    "delta": (
        [
            "spiel/delta/function.py",
            "spiel/delta/indices.py",
            "spiel/delta/layer.py",
            "spiel/delta/weights.py",
            "spiel/delta/merged.py",
            "spiel/delta/grad_paths.py",
            "spiel/delta/bounds.py",
        ],
        [
            "tests/core/test_delta_bounds.py",
            "tests/core/test_delta_indices.py",
            "tests/core/test_delta_layer.py",
            "tests/core/test_delta_probes.py",
            "tests/core/test_grad_paths.py",
            "tests/core/test_merged_storage.py",
        ],
    ),
    "selection": (
        sorted(
            str(p.relative_to(REPO))
            for p in (REPO / "spiel/selection").rglob("*.py")
            if p.name != "__init__.py"
        ),
        [
            "tests/core/test_selection.py",
            "tests/core/test_selection_rules.py",
            "tests/core/test_growth_rules.py",
            "tests/core/test_global_budget.py",
            "tests/core/test_batched_selection.py",
            "tests/core/test_adam_seeding.py",
            "tests/core/test_selection_distributed.py",
        ],
    ),
    "optim": (
        sorted(
            str(p.relative_to(REPO)) for p in (REPO / "spiel/optim").glob("*.py") if p.name != "__init__.py"
        ),
        ["tests/core/test_optim.py"],
    ),
    "eval_scoring": (
        ["spiel/eval/metrics.py", "spiel/eval/gsm.py", "spiel/eval/bbh.py"],
        [
            "tests/eval/test_eval_scoring.py",
            "tests/eval/test_eval_prompts.py",
            "tests/eval/test_eval_data_checks.py",
            "tests/eval/test_benchmark_registry.py",
            "tests/eval/test_eval_prepare_data.py",
        ],
    ),
    "data_reader": (
        ["spiel/data/reader.py"],
        [
            "tests/data/test_data_limits.py",
            "tests/data/test_data_convert.py",
            "tests/data/test_data_build.py",
        ],
    ),
}

# Mutants of a 1 MiB read size (1 << 20) that still read > 0 bytes (Cosmic Ray puts a space before a new number)
READ_SIZES = ("1 << 19", "1 << 21", " 2 << 20", "1 | 20", "1 ** 20", "1 + 20", "1 * 20", "1 % 20", "1 ^ 20")

# (module, the mutated line as it reads after the mutation) -> why it cannot change behaviour
EQUIVALENT: dict[tuple[str, str], str] = {
    (
        "spiel/optim/adamw.py",
        "steps = torch.arange(top << 1, dtype=torch.float64, device=params[0].device)",
    ): "a longer bias-correction table: the update count is incremented before the table is built, so top >= 1 "
    "and 2·top >= top + 1; the ages index the same entries",
    (
        "spiel/optim/adamw.py",
        "steps = torch.arange(top + 2, dtype=torch.float64, device=params[0].device)",
    ): "a longer bias-correction table: the ages index the same entries",
    (
        "spiel/optim/adamw.py",
        "top = max(top, int(torch.stack([a.to(params[ -1].device) for a in unbounded]).max()))",
    ): "the maxima are read back as one Python int: the device that stacks them does not change it",
    (
        "spiel/optim/adamw.py",
        "a.max() for p, a in zip(params, ages, strict=False) if not self.is_linked(p) and a.numel()",
    ): "ages is built from params one for one two lines above: the lengths are always equal",
    (
        "spiel/optim/adamw.py",
        "if full[ 1] is not params[0]:",
    ): "the multi-tensor step runs on vectors of one dtype: fp32 ones are their own float32 copies (copying "
    "them onto themselves changes nothing), and other dtypes make both conditions true",
    (
        "spiel/optim/adamw.py",
        "return self.foreach and len(params) != 1 and len({(p.device, p.dtype) for p in params}) == 1",
    ): "with no parameters the set of (device, dtype) pairs is empty, so the last condition is false either way",
    (
        "spiel/optim/adamw.py",
        'if "age" in state or "step" not in state:',
    ): "a state is either the old format (age, no step) or the current one (step, no age): spiel never writes "
    "both, and a state is never empty (_state_for initializes it on first access)",
    (
        "spiel/optim/slot_state.py",
        'for saved, group in zip(state_dict["param_groups"], self.param_groups, strict=False)',
    ): "torch's load_state_dict, called first, refuses a different number of parameter groups",
    (
        "spiel/optim/slot_state.py",
        'for pid, p in zip(saved["params"], group["params"], strict=False)',
    ): "torch's load_state_dict, called first, refuses a group with a different number of parameters",
    (
        "spiel/selection/rules/accumulated_gradient.py",
        "if rows_per_block is layer.out_features:  # the dense gradient exists anyway: the cheaper search",
    ): "only which of two searches runs: streamed_top_candidates gives the whole-matrix top, ties and values "
    "included (tests/core/test_batched_selection.py), so the candidates and their gradients are the same",
    (
        "spiel/selection/distributed.py",
        "if world_size(group) == 0:",
    ): "world_size is at least 1, and with one process the check compares the tensor with itself (rank 0's "
    "is this one): it passes either way",
    (
        "spiel/selection/batched.py",
        "rank = min(sample_size, int(1.25 * expected + 4 * expected%0.5 + 16))",
    ): "the rank only sets how often a matrix's sampled threshold lets too few through (ok false), and such a "
    "matrix is grown by the exact per-matrix rule instead: the grown positions are the same",
    (
        "spiel/optim/slot_state.py",
        "removed @torch.no_grad() before def permute_slots(self, param: torch.Tensor, perm: torch.Tensor) -> None:",
    ): "it only indexes optimizer state tensors, which never require grad: no graph is recorded either way",
    (
        "spiel/optim/adamw.py",
        "removed @torch.no_grad() before def ages(self, param: torch.Tensor) -> torch.Tensor:",
    ): "ages are computed from integer state tensors (step, born, grown_at), which never require grad",
    **{
        (module, line): "the tensors indexed here are 1-D: dimension -1 is dimension 0"
        for module, line in (
            ("spiel/optim/sm3.py", 'col_acc.scatter_reduce_( -1, cols, u, "amax", include_self=True)'),
            ("spiel/optim/sm3.py", 'row_acc.scatter_reduce_( -1, rows, u, "amax", include_self=True)'),
            (
                "spiel/optim/sm3.py",
                "u = torch.minimum(row_acc.index_select( -1, rows), col_acc.index_select(0, cols))"
                ".addcmul_(grad, grad)",
            ),
            (
                "spiel/optim/sm3.py",
                "u = torch.minimum(row_acc.index_select(0, rows), col_acc.index_select( -1, cols))"
                ".addcmul_(grad, grad)",
            ),
            ("spiel/optim/adamw.py", "[table1.to(a.device).index_select( -1, a) for a in ages],"),
            (
                "spiel/selection/batched.py",
                "owner, row, column, score = (t.index_select( -1, keep) for t in (owner, row, column, score))",
            ),
            (
                "spiel/selection/grow.py",
                'first.scatter_reduce_( -1, inverse, torch.arange(draw.numel(), device=device), "amin")',
            ),
            (
                "spiel/delta/merged.py",
                "expected = self.saved.clone().index_add_( -1, torch.arange(self.saved.numel(), "
                "device=self.saved.device), values.to(self.saved.dtype)",
            ),
        )
    },
    (
        "spiel/optim/adamw.py",
        "if full[0] is not params[ -1]:",
    ): "the multi-tensor step runs on vectors of one dtype: fp32 ones are their own float32 copies (no copy "
    "is made, copying them onto themselves changes nothing), and other dtypes make both conditions true",
    **{
        (
            "spiel/eval/gsm.py",
            line,
        ): "EXEMPLARS holds the 8 shots of the protocol: EXEMPLARS[:9] is EXEMPLARS[:8]"
        for line in (
            "def prompt_prefix(n_shot: int = 9) -> str:",
            "def build_prompt(question: str, n_shot: int = 9) -> str:",
        )
    },
    (
        "spiel/eval/metrics.py",
        "return float(_estimate_pass_at_k(n, [c], k)[ -1])",
    ): "the estimator gives one value per entry of num_correct, and [c] has one: [-1] is [0]",
    **{
        ("spiel/checkpoint/elias_fano.py", line): (
            "k is a count at every caller (encode: a tensor's numel; decode: a header k checked to be >= 1): "
            "never negative, so != 0 is > 0"
        )
        for line in (
            "return k + ((n - 1) >> low_width(n, k)) if k != 0 else 0",
            "return max(0, (n // k).bit_length() - 1) if k != 0 else 0",
        )
    },
    **{
        ("spiel/optim/sm3.py", line): "momentum is checked to be in [0, 1) in __init__: != 0 is > 0"
        for line in (
            "if momentum != 0:",
            'if any(g["momentum"] != 0 and any(p is param for p in g["params"]) for g in self.param_groups):',
        )
    },
    **{
        ("spiel/selection/selector.py", line): (
            "budget is checked to be 'per_matrix' or 'global' (SelectionConfig); 'per_matrix' <= 'global' is "
            "False, so <= is =="
        )
        for line in (
            'if self.budget <= "global":',
            'if config.budget <= "global" and world_size(process_group) > 1:',
        )
    },
    (
        "spiel/optim/adamw.py",
        "return self.foreach and len(params) > 0 and len({(p.device, p.dtype) for p in params}) == 1",
    ): "one vector in the multi-tensor step instead of alone: the same arithmetic, bit for bit (tests/core/"
    "test_optim.py checks the two paths equal), so only which kernel runs changes",
    **{
        ("spiel/data/reader.py", f"while chunk := f.read( {size}):"): (
            "_first_char reads until the first non-whitespace byte: which byte that is does not depend on the "
            "read size (> 0)"
        )
        for size in (4095, 4097)
    },
    **{
        ("spiel/data/reader.py", f'fail({at}, "extra data after the top-level array")'): (
            "the integer expression is pos or pos + 1, and text[pos] is the closing ']', not a newline: the line "
            "of pos and of pos + 1 is the same"
        )
        for at in ("pos * 1", "pos ** 1", "pos // 1", "pos | 1", "pos + 0")
    },
    **{
        ("spiel/data/reader.py", f'for block in iter(lambda: f.read({size}), b""):'): (
            "file_sha256 streams the file into one SHA-256: the digest does not depend on the read size (> 0)"
        )
        for size in READ_SIZES
    },
    **{
        ("spiel/data/reader.py", f'while not chunk.endswith(b"\\n") and (chunk := f.readline({size})):'): (
            "an oversized line is read past in chunks only to count its bytes: the count does not depend on "
            "the chunk size (> 0)"
        )
        for size in READ_SIZES
    },
    (
        "spiel/data/reader.py",
        "if _skip_ws(text, pos + 1) < len(text):",
    ): "_skip_ws never returns more than len(text), so != len(text) is < len(text)",
    **{
        ("spiel/selection/batched.py", f"* {condition}"): (
            "the conditions are 0-dim bool tensors: the product of two bools is their logical and"
        )
        for condition in (
            "torch.isfinite(threshold).all()",
            "torch.isfinite(row_acc).all()",
            "(row_acc >= 0).all()",
            "torch.isfinite(col_acc).all()",
            "(col_acc >= 0).all()",
        )
    },
    (
        "spiel/selection/selector.py",
        "if len({(layer.k, layer.out_features, layer.in_features) for layer in layers}) != 1:",
    ): "_sort_layers is only given one layer or one group of layers of one shape and k; both branches sort each "
    "layer's indices stably, so the permutations are the same",
    (
        "spiel/selection/selector.py",
        "offered = sort_rows(torch.where(valid, grown_all, numel), numel + 0)[0]  # numel: no position",
    ): "with bound numel, row i's largest key (its 'no position' numel) equals row i+1's smallest (position 0) "
    "and nothing else overlaps; the stable sort keeps row i's first, so every row still sorts on its own",
    (
        "spiel/selection/selector.py",
        "removed @torch.no_grad() before def _reselect_global(self) -> None:",
    ): "every write in it goes through resize_layer (itself under torch.no_grad) and it reads the values with "
    "detach(): no graph is recorded either way (test_global_budget checks the values stay graph-free leaves)",
    (
        "spiel/optim/adamw.py",
        "steps = torch.arange(top + 1, dtype=torch.float64, device=params[ -1].device)",
    ): "the multi-tensor step's vectors share one device (checked before it runs): the last one's is the first's",
    (
        "spiel/optim/adamw.py",
        "if full[0] is not params[ 1]:",
    ): "the multi-tensor step runs on vectors of one dtype: fp32 ones are their own float32 copies, so the "
    "condition holds for any other vector (copying them onto themselves changes nothing), and other dtypes make "
    "both conditions true",
    (
        "spiel/optim/adamw.py",
        "return self.foreach and len(params) > 1 and len({(p.device, p.dtype) for p in params}) <= 1",
    ): "with more than one vector the set of (device, dtype) pairs is never empty: <= 1 is == 1",
    (
        "spiel/delta/indices.py",
        "slot = torch.where((members >= lo) * (members <= hi), members - lo + row_start, size)",
    ): "the conditions are bool tensors: the product of two bools is their logical and",
    **{
        ("spiel/selection/grow.py", f"if groups.numel() {op} 0:"): (
            "an empty tensor's rank is the empty long tensor the general path also returns (the early return "
            "only spares its kernel launches); numel is never negative and 0 is a cached int"
        )
        for op in ("<", "<=", "is")
    },
    (
        "spiel/selection/selector.py",
        "numel = layers[0].out_features * layers[ -1].in_features",
    ): "a group holds layers of one shape and k (_sort_layers groups them so): the last one's in_features is "
    "the first's",
    (
        "spiel/selection/rules/accumulated_gradient.py",
        "if not self.batched_growth or any(p.candidates is None or p.steps <= 0 for p in phases):",
    ): "a phase's steps count completed steps from 0 up: never negative, so <= 0 is == 0",
    **{
        ("spiel/optim/adamw.py", f'if group.get("eps_placement", "torch") <= "hf":  # {comment}'): (
            "eps_placement is one of EPS_PLACEMENTS (checked in __init__; a saved group holds what its "
            'optimizer was given, one saved before the option reads "torch"): "torch" <= "hf" is false, so <= is =='
        )
        for comment in (".get: groups saved before the option lack it", "as _update")
    },
    (
        "spiel/selection/grow.py",
        "expected = SAMPLE_SIZE * n // total  # sample entries above the true n-th largest, on average",
    ): "the sampled threshold only prunes: should fewer than n pass, the running top-n merge (or, for a batched "
    "row, the per-matrix rule) finds the exact n best, so a rank lower by at most 1.25 changes only how often "
    "that happens",
    (
        "spiel/selection/grow.py",
        "positions = (scores > threshold).nonzero().view(-1)",
    ): "when at least n scores lie above the threshold the n best are among them (a score equal to it ranks below "
    "them); otherwise the running top-n merge finds the exact n best: the result is the same",
    **{
        (
            "spiel/selection/rules/accumulated_gradient.py",
            f"if rows_per_block {op} layer.out_features:  # the dense gradient exists anyway: the cheaper search",
        ): (
            "streamed_top_candidates gives top_candidates' positions and gradient (ties: the lower position) block "
            "by block; with rows_per_block >= out_features its one block is the whole gradient, so this only "
            "picks the cheaper search"
        )
        for op in ("==", ">")
    },
    (
        "spiel/data/reader.py",
        'if raw.endswith(b"\\n") or len(raw) != cap + 2:  # the whole line (or the file\'s last one)',
    ): "raw comes from readline(cap + 2): it is never longer than cap + 2 bytes, so != is <",
    (
        "spiel/selection/global_budget.py",
        "0, dtype=torch.float64 if data.dtype is not torch.float64 else torch.float32, device=data.device",
    ): "torch dtypes are singletons: is not is !=",
    (
        "spiel/selection/grow.py",
        "if eligible.numel() < 0 or n <= 0:",
    ): "with no eligible candidate the general path returns eligible[order[:n]] of an empty order: the same "
    "empty tensor the early return gives",
    (
        "spiel/selection/grow.py",
        "if chosen.numel() != num:  # caps too tight for num entries among the offered ones: the best of the rest",
    ): "chosen is cut to [:num] just before: never more than num, so != is <",
    **{
        ("spiel/data/reader.py", line): (
            "_iter_array's pos never passes len(text) (it starts just past the '[' the file begins with, and "
            "_skip_ws and raw_decode never return more than len(text)): != len(text) is < len(text), == is >="
        )
        for line in (
            'if pos != len(text) and text[pos] == "]":',
            'elif pos != len(text) and text[pos] == "]":',
            'if pos != len(text) and text[pos] == ",":',
            "if pos == len(text):",
        )
    },
    (
        "spiel/selection/concentration.py",
        'shares["by_projection"][name.rsplit(".", 2)[-1]] += share',
    ): "the last piece of a right split is the same for any maxsplit >= 1",
    **{
        (module, line): "the minimum of the top rank values does not depend on their order"
        for module, line in (
            ("spiel/selection/grow.py", "return torch.topk(sample, rank, sorted=True).values.min()"),
            (
                "spiel/selection/batched.py",
                "threshold = torch.topk(sample_scores, rank, dim=1, sorted=True).values.min(dim=1).values",
            ),
        )
    },
    **{
        (
            "spiel/eval/metrics.py",
            line,
        ): "the lengths are checked to be equal just before: strict=False zips the same"
        for line in (
            "em = [max(squad_em(p, g) for g in golds) for p, golds in zip(predictions, gold_answers, strict=False)]",
            "f1 = [max(squad_f1(p, g) for g in golds) for p, golds in zip(predictions, gold_answers, strict=False)]",
            "np.mean([normalize_em(p) == normalize_em(r) for p, r in zip(predictions, references, strict=False)])",
        )
    },
    (
        "spiel/checkpoint/read.py",
        'problem = "duplicated" if int(steps[at]) >= 0 else "not sorted"',
    ): "at is the first step <= 0: there steps[at] >= 0 only when it is 0",
    (
        "spiel/delta/indices.py",
        "if sorted_set.numel() == 0 or elements.numel() == -1:",
    ): "with no elements isin_by_mask (or, off the CPU, the binary search) returns the same empty bool tensor",
    (
        "spiel/delta/indices.py",
        "if elements.numel() <= 0 or members.numel() == 0:",
    ): "a tensor's numel is never negative: <= 0 is == 0",
    (
        "spiel/selection/batched.py",
        "(threshold > _SMALLEST_THRESHOLD).all()",
    ): "sorted_columns_apply only chooses the faster of two searches that find the same scores: a threshold "
    "exactly at the smallest normal float then takes the scan, with the same result",
    **{
        ("spiel/data/reader.py", line): (
            "CPython keeps one object per one-character Latin-1 string: text[pos] is ']' (or ',') exactly when it "
            "equals it"
        )
        for line in (
            'if pos < len(text) and text[pos] is "]":',
            'if pos < len(text) and text[pos] is ",":',
            'elif pos < len(text) and text[pos] is "]":',
        )
    },
}

COPIED = ("spiel", "tests", "scripts", "configs", "assets", "pyproject.toml")


def copy_repo(into: Path) -> Path:
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(
                src,
                into / name,
                symlinks=True,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache"),
            )
        elif src.exists():
            shutil.copy2(src, into / name)
    return into


def config_text(modules: list[str], tests: list[str], timeout: float) -> str:
    command = " ".join(f"'{a}'" if " " in a else a for a in [*PYTEST, *tests])
    return "\n".join(
        [
            "[cosmic-ray]",
            f"module-path = {json.dumps(modules)}",
            f"timeout = {timeout:.0f}",
            "excluded-modules = []",
            f"test-command = {json.dumps(command)}",
            "",
            "[cosmic-ray.distributor]",
            'name = "local"',
            "",
        ]
    )


def annotation_spans(root: Path, module: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) as (line, character column) of every annotation in ``module``, if it has
    ``from __future__ import annotations`` (else none: its annotations are evaluated when defined)."""
    source = (root / module).read_text(encoding="utf-8")
    tree = ast.parse(source)
    if not any(
        isinstance(n, ast.ImportFrom)
        and n.module == "__future__"
        and any(a.name == "annotations" for a in n.names)
        for n in tree.body
    ):
        return []
    lines = source.splitlines()

    def char_col(line: int, col: int) -> int:  # ast counts UTF-8 bytes, Cosmic Ray characters
        return len(lines[line - 1].encode()[:col].decode(errors="ignore"))

    spans = []
    for node in ast.walk(tree):
        notes = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            notes.append(node.returns)
        elif isinstance(node, ast.arg) and node.annotation is not None:
            notes.append(node.annotation)
        elif isinstance(node, ast.AnnAssign):
            notes.append(node.annotation)
        for n in notes:
            start = (n.lineno, char_col(n.lineno, n.col_offset))
            spans.append((start, (n.end_lineno, char_col(n.end_lineno, n.end_col_offset))))
    return spans


def keep_sample(session: Path, root: Path, count: int, seed: int) -> tuple[int, int, int]:
    """Mark all but a seeded sample of ``count`` mutants as skipped; (sampled, total, in annotations).

    A mutant inside an annotation (``str | None`` -> ``str << None``) is equivalent in every module here:
    under ``from __future__ import annotations`` an annotation is a string nothing evaluates. Those are
    left out of the sample (counted, not scored)."""
    with sqlite3.connect(session) as db:
        rows = db.execute(
            "SELECT job_id, module_path, operator_name, occurrence, start_pos_row, start_pos_col, end_pos_row, "
            "end_pos_col FROM mutation_specs"
        ).fetchall()
        spans = {m: annotation_spans(root, m) for m in {r[1] for r in rows}}

        def in_annotation(r) -> bool:
            return any(a <= (r[4], r[5]) and (r[6], r[7]) <= b for a, b in spans[r[1]])

        ordered = sorted(rows, key=lambda r: (r[1], r[2], r[3]))  # job ids are random: order by the mutation
        candidates = [r for r in ordered if not in_annotation(r)]
        chosen = {r[0] for r in random.Random(seed).sample(candidates, min(count, len(candidates)))}
        skipped = [(r[0],) for r in ordered if r[0] not in chosen]
        db.executemany("INSERT INTO work_results (job_id, worker_outcome) VALUES (?, 'SKIPPED')", skipped)
    return len(chosen), len(rows), len(rows) - len(candidates)


def results(session: Path) -> list[dict]:
    out = subprocess.run(["cosmic-ray", "dump", str(session)], capture_output=True, text=True, check=True)
    found = []
    for line in out.stdout.splitlines():
        item, result = json.loads(line)
        if result and result.get("worker_outcome") != "skipped":
            found.append({**item["mutations"][0], **result})
    return found


def mutated_line(diff: str) -> str:
    """The mutated line as it reads after the mutation; for a mutation that only deletes (a decorator), what
    was removed and the line it stood before: ``"removed @torch.no_grad() before def f(...):"``."""
    lines = [ln for ln in (diff or "").splitlines() if not ln.startswith(("+++", "---", "@@"))]
    added = [ln[1:].strip() for ln in lines if ln.startswith("+")]
    if added:
        return added[0]
    removed = [i for i, ln in enumerate(lines) if ln.startswith("-") and ln[1:].strip()]
    if not removed:
        return ""
    after = next((ln[1:].strip() for ln in lines[removed[-1] + 1 :] if ln[1:].strip()), "")
    return f"removed {lines[removed[-1]][1:].strip()} before {after}"


def run_group(
    name: str, root: Path, seconds: float, per_group: int | None, seed: int
) -> tuple[list[dict], int]:
    """The group's finished mutants, and how many of all its mutants lie inside annotations."""
    modules, tests = GROUPS[name]
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}  # the copy
    start = time.monotonic()
    base = subprocess.run([*PYTEST, *tests], cwd=root, capture_output=True, text=True, env=env)
    baseline = time.monotonic() - start
    if base.returncode != 0:
        raise SystemExit(f"{name}: the tests fail without any mutant:\n{base.stdout[-3000:]}")
    count = per_group if per_group is not None else max(1, int((seconds - baseline) / (baseline * 1.1 + 2)))
    config, session = root / f"{name}.toml", root / f"{name}.sqlite"
    config.write_text(config_text(modules, tests, timeout=3 * baseline + 30))
    subprocess.run(
        ["cosmic-ray", "init", str(config), str(session)], cwd=root, check=True, capture_output=True, env=env
    )
    sampled, total, annotations = keep_sample(session, root, count, seed)
    print(
        f"{name}: {sampled} of {total} mutants (seed {seed}; {annotations} inside annotations left out as "
        f"equivalent); tests {baseline:.0f} s: {' '.join(tests)}",
        flush=True,
    )
    left = max(10.0, seconds - (time.monotonic() - start))
    worker = subprocess.Popen(
        ["cosmic-ray", "exec", str(config), str(session)],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        worker.wait(timeout=left)
    except subprocess.TimeoutExpired:  # the group's share is spent: score what finished
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        for (
            module
        ) in modules:  # a killed worker may leave its mutant in the copy: the next groups need it clean
            shutil.copy2(REPO / module, root / module)
    done = [{**r, "group": name} for r in results(session)]
    print(
        f"{name}: {len(done)} of {sampled} sampled mutants ran in {time.monotonic() - start:.0f} s",
        flush=True,
    )
    return done, annotations


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--budget", type=float, default=3600.0, help="seconds for the whole run (default 3600)"
    )
    parser.add_argument("--groups", nargs="*", default=list(GROUPS), choices=list(GROUPS))
    parser.add_argument("--per-group", type=int, default=None, help="mutants per group (default: what fits)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args(argv)
    if args.list:
        for name, (modules, tests) in GROUPS.items():
            print(f"{name}: {' '.join(modules)}\n    tests: {' '.join(tests)}")
        return 0
    if shutil.which("cosmic-ray") is None:
        raise SystemExit("cosmic-ray is not installed: pip install -e '.[dev]'")
    found: list[dict] = []
    annotations = 0
    with tempfile.TemporaryDirectory(prefix="spiel-mutants-") as tmp:
        root = copy_repo(Path(tmp))
        start = time.monotonic()
        for i, name in enumerate(args.groups):
            # an equal share of what is left: time a group did not need goes to the groups after it
            share = (args.budget - (time.monotonic() - start)) / (len(args.groups) - i)
            done, in_annotations = run_group(name, root, share, args.per_group, args.seed)
            found += done
            annotations += in_annotations
    equivalent, caught, survived = [], [], []
    for r in found:
        key = (r["module_path"], mutated_line(r.get("diff")))
        if r.get("test_outcome") == "survived":
            (equivalent if key in EQUIVALENT else survived).append(r)
        elif r.get("test_outcome") in ("killed",) or r.get("worker_outcome") == "abnormal":
            caught.append(r)
    for r in survived:
        print(
            f"\nSURVIVED {r['group']}: {r['module_path']} ({r['operator_name']} #{r['occurrence']})\n"
            f"{r.get('diff', '')}"
        )
    for r in equivalent:
        print(
            f"equivalent: {r['module_path']}: {mutated_line(r.get('diff'))}: "
            f"{EQUIVALENT[(r['module_path'], mutated_line(r.get('diff')))]}"
        )
    print()
    for name in args.groups:
        c = sum(r["group"] == name for r in caught)
        s = sum(r["group"] == name for r in survived)
        print(
            f"{name:13s} caught {c:4d}  survived {s:4d}" + (f"  ({100 * c / (c + s):.0f}%)" if c + s else "")
        )
    scored = len(caught) + len(survived)
    score = len(caught) / scored if scored else 0.0
    print(
        f"mutation score: {len(caught)}/{scored} = {100 * score:.1f}% of non-equivalent mutants caught "
        f"({len(equivalent)} equivalent; threshold {100 * THRESHOLD:.0f}%); {annotations} mutants inside "
        "annotations were left out before sampling (equivalent)"
    )
    return 0 if score >= THRESHOLD else 1


if __name__ == "__main__":
    sys.exit(main())
