"""MMLU, 5-shot, scored by the next-token probability of " A" ... " D" (open-instruct's protocol).

Prompt (no chat template): "The following are multiple choice questions (with answers) about {subject}.\\n\\n"
where {subject} is every underscore-separated word with a leading space (so two spaces after "about"),
then the first `ntrain` dev rows of the subject, each "{q}\\nA. {a}\\nB. {b}\\nC. {c}\\nD. {d}\\nAnswer: {X}\\n\\n",
then the test row ending in "Answer:". While the prompt (tokenized without special tokens) is longer than
`max_prompt_tokens` (2048) the number of shots drops by one. The tokenizer adds BOS when the prompt is
scored. The prediction is the argmax of the softmax over the full vocabulary at the last position,
restricted to the ids of " A" ... " D" (the last token of each, "▁A" for LLaMA). `average_acc` is the
micro-average over all questions; `subcat_acc` and `cat_acc` group subjects as Hendrycks et al.

CSV cells are read with pandas (`header=None`) like the reference, so its type inference applies (a
numeric column "0.50" becomes "0.5", and "None"/"NA" cells become "nan"); `reader="csv"` keeps the
file's text verbatim instead.
"""

from __future__ import annotations

import csv
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from spiel.eval.benchmark import MISSING, BenchConfig, Benchmark
from spiel.eval.data import BenchDataError, require
from spiel.eval.mmlu_categories import CATEGORIES, SUBCATEGORIES

CHOICES = ["A", "B", "C", "D"]


def format_subject(subject: str) -> str:
    return "".join(" " + word for word in subject.split("_"))


def format_example(row, include_answer: bool) -> str:
    text = f"{row[0]}"
    for j, letter in enumerate(CHOICES):
        text += f"\n{letter}. {row[j + 1]}"
    text += "\nAnswer:"
    if include_answer:
        text += f" {row[len(CHOICES) + 1]}\n\n"
    return text


def gen_prompt(dev_rows, subject: str, k: int) -> str:
    prompt = (
        f"The following are multiple choice questions (with answers) about {format_subject(subject)}.\n\n"
    )
    return prompt + "".join(format_example(dev_rows[i], True) for i in range(min(k, len(dev_rows))))


def build_prompt(
    tokenizer, dev_rows, subject: str, row, ntrain: int = 5, max_prompt_tokens: int = 2048
) -> str:
    end = format_example(row, include_answer=False)
    k = ntrain
    prompt = gen_prompt(dev_rows, subject, k) + end
    while k > 0 and len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) > max_prompt_tokens:
        k -= 1
        prompt = gen_prompt(dev_rows, subject, k) + end
    return prompt


def check_rows(path: Path) -> None:
    """Every row of an MMLU CSV is [question, A, B, C, D, answer] with the answer one of A-D (checked on
    the file's text, so an error names its line whichever reader then parses it)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        count = 0
        try:
            for row in reader:
                if not row:
                    continue
                count += 1
                where = f"{path}:{reader.line_num}"
                if len(row) != len(CHOICES) + 2:
                    raise BenchDataError(
                        f"{where}: expected {len(CHOICES) + 2} columns (question, A, B, C, D, "
                        f"answer), got {len(row)}"
                    )
                if row[-1].strip() not in CHOICES:
                    raise BenchDataError(
                        f"{where}: the answer {row[-1]!r} is not one of {', '.join(CHOICES)}"
                    )
        except (csv.Error, UnicodeDecodeError) as e:
            raise BenchDataError(f"{path}:{reader.line_num}: not readable CSV ({e})") from None
    if not count:
        raise BenchDataError(f"{path}: file is empty")


def read_rows(path: Path, reader: str = "pandas") -> list[list]:
    if reader not in ("pandas", "csv"):
        raise ValueError(f"mmlu reader must be 'pandas' or 'csv', got {reader!r}")
    check_rows(path)
    if reader == "pandas":
        import pandas as pd

        return pd.read_csv(path, header=None).values.tolist()
    with open(path, newline="", encoding="utf-8") as f:
        return [row for row in csv.reader(f) if row]


def subjects(data_dir: Path, split: str = "test") -> list[str]:
    folder = require(Path(data_dir) / "mmlu" / split, "mmlu", data_dir)
    found = sorted(p.name[: -len(f"_{split}.csv")] for p in folder.glob(f"*_{split}.csv"))
    if not found:
        raise FileNotFoundError(f"mmlu: no *_{split}.csv files in {folder}")
    return found


def candidate_ids(tokenizer) -> list[int]:
    """The id of the last token of " A" ... " D" (the reference's answer_choice_ids)."""
    return [tokenizer.encode(" " + c, add_special_tokens=False)[-1] for c in CHOICES]


def _left_pad(seqs: list[list[int]], pad_id: int):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


@torch.inference_mode()
def next_token_probs(
    model, tokenizer, prompts: list[str], token_ids: list[int], batch_size: int = 4, progress: bool = False
) -> np.ndarray:
    """[len(prompts), len(token_ids)]: softmax over the whole vocabulary at the position after each prompt
    (BOS added by the tokenizer), at `token_ids`. Left padding with position ids from the attention mask,
    so a prompt's probabilities do not depend on what else is in its batch."""
    if not prompts:
        return np.zeros((0, len(token_ids)), dtype=np.float32)
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="mmlu", unit="batch")
    out = np.zeros((len(prompts), len(token_ids)), dtype=np.float32)
    index = torch.tensor(token_ids, device=device)
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            ids, mask, pos = (t.to(device) for t in _left_pad([encoded[i] for i in batch], pad_id))
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits[
                :, -1, :
            ]
            probs = logits.float().softmax(-1).index_select(-1, index)
            out[batch] = probs.cpu().numpy()
    finally:
        model.train(was_training)
    return out


def load_mmlu(
    data_dir,
    ntrain: int = 5,
    split: str = "test",
    reader: str = "pandas",
    limit: int | None = None,
    subject_list: list[str] | None = None,
) -> tuple[dict[str, list], list[tuple]]:
    """({subject: its first `ntrain` dev rows}, [(subject, index, test row)]), every file checked."""
    data_dir = Path(data_dir)
    names = subject_list or subjects(data_dir, split)
    dev, items = {}, []
    for subject in names:
        dev[subject] = read_rows(
            require(data_dir / "mmlu" / "dev" / f"{subject}_dev.csv", "mmlu", data_dir), reader
        )[:ntrain]
        rows = read_rows(
            require(data_dir / "mmlu" / split / f"{subject}_{split}.csv", "mmlu", data_dir), reader
        )
        items += [(subject, i, row) for i, row in enumerate(rows[:limit] if limit else rows)]
    return dev, items  # not empty: every file was checked to hold a row


def evaluate_mmlu(
    model,
    tokenizer,
    data_dir,
    ntrain: int = 5,
    split: str = "test",
    max_prompt_tokens: int = 2048,
    reader: str = "pandas",
    batch_size: int = 4,
    limit: int | None = None,
    subject_list: list[str] | None = None,
    progress: bool = False,
) -> dict:
    """Returns {"metrics": {...}, "predictions": [...]} (one prediction row per question)."""
    dev, items = load_mmlu(data_dir, ntrain, split, reader, limit, subject_list)
    prompts = [
        build_prompt(tokenizer, dev[subject], subject, row, ntrain, max_prompt_tokens)
        for subject, _, row in items
    ]
    probs = next_token_probs(model, tokenizer, prompts, candidate_ids(tokenizer), batch_size, progress)
    predictions, per_subject = [], {}
    for (subject, i, row), p in zip(items, probs, strict=True):
        pred = CHOICES[int(np.argmax(p))]
        correct = pred == str(row[len(CHOICES) + 1]).strip()
        per_subject.setdefault(subject, []).append(correct)
        predictions.append(
            {
                "subject": subject,
                "index": i,
                "question": str(row[0]),
                "answer": str(row[5]),
                "prediction": pred,
                "correct": correct,
                **{f"choice{c}_probs": float(v) for c, v in zip(CHOICES, p, strict=True)},
            }
        )
    return {"metrics": mmlu_metrics(per_subject), "predictions": predictions}


def mmlu_metrics(per_subject: dict[str, list[bool]]) -> dict:
    subcat: dict[str, list[bool]] = {}
    for subject, cors in per_subject.items():
        subcat.setdefault(SUBCATEGORIES.get(subject, "other"), []).extend(cors)
    cat = {name: [c for s in subs for c in subcat.get(s, [])] for name, subs in CATEGORIES.items()}
    everything = [c for cors in per_subject.values() for c in cors]
    return {
        "average_acc": float(np.mean(everything)) if everything else 0.0,
        "subcat_acc": {k: float(np.mean(v)) for k, v in sorted(subcat.items())},
        "cat_acc": {k: float(np.mean(v)) for k, v in cat.items() if v},
        "subject_acc": {k: float(np.mean(v)) for k, v in sorted(per_subject.items())},
        "num_examples": len(everything),
    }


# -- the benchmark: config, data layout and sources, hooks ------------------------------------------------
EXPECTED_SUBJECTS = 57  # 14,042 test questions


@dataclass
class MmluConfig(BenchConfig):
    ntrain: int = MISSING
    split: str = MISSING  # test | val
    max_prompt_tokens: int = MISSING
    reader: str = MISSING  # pandas | csv
    subjects: Optional[list[str]] = None


def _check_data(bench: dict, data_dir, seed: int, limit: int | None) -> None:
    load_mmlu(data_dir, bench["ntrain"], bench["split"], bench["reader"], limit, bench.get("subjects"))


def _evaluate(model, tokenizer, bench: dict, data_dir, *, batch_size, seed, limit, progress) -> dict:
    return evaluate_mmlu(
        model,
        tokenizer,
        data_dir,
        ntrain=bench["ntrain"],
        split=bench["split"],
        max_prompt_tokens=bench["max_prompt_tokens"],
        reader=bench["reader"],
        subject_list=bench.get("subjects"),
        batch_size=batch_size,
        limit=limit,
        progress=progress,
    )


def lay_out(files: list[Path], data_dir: Path) -> None:
    """data.tar's data/{dev,val,test}/<subject>_<split>.csv into mmlu/ (auxiliary_train is not needed)."""
    out = Path(data_dir) / "mmlu"
    with tarfile.open(files[0]) as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if ".." in parts or member.name.startswith("/"):
                raise ValueError(f"refusing archive member outside the archive: {member.name}")
            if (
                member.isfile()
                and len(parts) == 3
                and parts[0] == "data"
                and parts[1] in ("dev", "val", "test")
            ):
                target = out / parts[1] / parts[2]
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)


def verify(data_dir: Path) -> list[str]:
    problems = []
    tests = sorted((Path(data_dir) / "mmlu" / "test").glob("*_test.csv"))
    devs = {p.name[:-8] for p in (Path(data_dir) / "mmlu" / "dev").glob("*_dev.csv")}
    if len(tests) != EXPECTED_SUBJECTS:
        problems.append(f"mmlu: {len(tests)} test subjects, expected {EXPECTED_SUBJECTS}")
    missing = [p.name[:-9] for p in tests if p.name[:-9] not in devs]
    if missing:
        problems.append(f"mmlu: no dev file for {missing[:3]}")
    return problems


BENCHMARK = Benchmark(
    name="mmlu",
    config=MmluConfig,
    evaluate=_evaluate,
    headline=(("average_acc",), 100.0),
    title="MMLU",
    column=1,
    in_average=True,
    check_data=_check_data,
    layout="mmlu/{dev,test}/<subject>_{dev,test}.csv (hendrycks data.tar)",
    sources=(("https://people.eecs.berkeley.edu/~hendrycks/data.tar", "data.tar"),),
    lay_out=lay_out,
    verify=verify,
)
