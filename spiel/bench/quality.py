"""A CPU mini-Table 1 under a fair protocol: each method fine-tunes the tiny base on the demo task at the
same parameter budget (LoRA rank r = SpIEL rank-equivalent r; full and (IA)3 have their own counts), its
learning rate and weight decay λ chosen jointly on a validation split (:func:`search_grid`), then trained
with several seeds at the chosen setting and scored on the held-out file (greedy exact match, and the loss
on the answer tokens). A seed sets the initial indices / adapter initialisation and the data order.

The loop is the package's plain training loop (``spiel.training.engine.plain_loop``); the models are wrapped by the
method registry (``spiel.training.methods``), like spiel-train does. A method name is a registry method (``lora``,
``ag``, ...), ``static`` (SpIEL-AG's layer and optimizer with its random indices never reselected), or a
variant ``<method>+<key>=<value>[+...]`` whose keys are method-config fields (e.g. ``ag+drop=change``), or
``shira``: peft's SHiRA adapter (``ShiraConfig``, a random sparse mask, the values trained with torch's AdamW),
the one-line static sparse baseline a peft user reaches for.
"""

from __future__ import annotations

import copy
import functools
import json
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from spiel.bench.models import (
    METHOD_CONFIG_DIR,
    is_sparse,
    method_config,
    paper_hparams,
    paper_method,
    reselects,
    trainable_count,
    wrap_for_training,
)
from spiel.bench.support import concentration_by_projection
from spiel.training.engine.plain_loop import train_steps

QUALITY_METHODS = ("full", "lora", "ia3", "ag", "ma", "static", "shira")
SPARSE = tuple(m for m in QUALITY_METHODS if is_sparse(m))  # ag, ma, static (shira is peft's, not spiel's)
# shira's default rate and paper decay are static sparsity's: both train a fixed random sparse delta with
# AdamW decaying toward the pretrained weights
HYPER_TWIN = {"shira": "static"}
# The joint grid. Rates: the demo's rate for the method (configs/model_method/tiny_<method>.yaml, picked by
# the previous lr-only protocol) × LR_FACTORS. Decay per step, lr·λ: the paper's (Table 4 lr × λ) ×
# DECAY_FACTORS, so λ = factor · paper lr·λ / lr; the paper's own per-step decay (factor 1) is in the grid,
# as are the 10× and 30× stronger decays a 3M-parameter model on ~170 steps may want. "cross" (the default,
# 5 points, to fit a shared 2-core box): every decay at the demo's rate, and every rate at the middle decay;
# "full": all 9 pairs. LoRA's paper λ is 0, so its λ grid is LORA_WEIGHT_DECAYS (0, and a plain decay toward
# 0 at the demo's rate in "cross").
LR_FACTORS = (1 / 3, 1.0, 3.0)
DECAY_FACTORS = (1.0, 10.0, 30.0)
LORA_WEIGHT_DECAYS = (0.0, 1.0)
GRID_SHAPES = ("cross", "full")
SEARCH_SEED = 0
SEEDS = (1, 2, 3)
DEMO_METHOD_CONFIG_DIR = METHOD_CONFIG_DIR.parent / "model_method"


def parse_method(name: str) -> tuple[str, dict]:
    """``(base, overrides)`` of a benchmark method name: ``"ag+drop=change"`` → ``("ag", {"drop": "change"})``.
    Values are read as YAML scalars (numbers, booleans, strings)."""
    base, *parts = name.split("+")
    if base not in QUALITY_METHODS:
        raise ValueError(f"unknown method {base!r} in {name!r}; choose from {', '.join(QUALITY_METHODS)}")
    overrides = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise ValueError(f"method variant {part!r} in {name!r} must read key=value")
        overrides[key] = yaml.safe_load(value)
    if overrides and base not in SPARSE:
        raise ValueError(f"variants ({name!r}) are for the sparse methods {', '.join(SPARSE)}")
    return base, overrides


@functools.cache
def demo_lr(base: str) -> float:
    """The demo's learning rate for a method (its tiny_<method>.yaml); ``static`` uses SpIEL-AG's."""
    base = HYPER_TWIN.get(base, base)
    cfg = yaml.safe_load((DEMO_METHOD_CONFIG_DIR / f"tiny_{paper_method(base)}.yaml").read_text())
    return float(cfg["method"]["lr"])


def search_grid(
    name: str, lr_factors=LR_FACTORS, decay_factors=DECAY_FACTORS, shape: str = "cross"
) -> list[tuple[float, float]]:
    """The (lr, λ) pairs searched for ``name`` (see the grid comment above)."""
    if shape not in GRID_SHAPES:
        raise ValueError(f"grid shape must be one of {', '.join(GRID_SHAPES)}, got {shape!r}")
    base, _ = parse_method(name)
    paper_lr, paper_wd = paper_hparams(paper_method(HYPER_TWIN.get(base, base)))
    center = demo_lr(base)
    rates = [float(f"{center * f:.3g}") for f in lr_factors]
    if paper_wd == 0:
        pairs = [(lr, wd) for lr in rates for wd in LORA_WEIGHT_DECAYS]
        middle = LORA_WEIGHT_DECAYS[0]
    else:
        decays = [paper_lr * paper_wd * f for f in decay_factors]
        pairs = [(lr, float(f"{d / lr:.3g}")) for lr in rates for d in decays]
        middle = float(f"{decays[len(decays) // 2] / center:.3g}")
    if shape == "full":
        return pairs
    at_center = [(lr, wd) for lr, wd in pairs if lr == float(f"{center:.3g}")]
    at_middle = [(lr, float(f"{middle * center / lr:.3g}") if paper_wd else middle) for lr in rates]
    return list(dict.fromkeys(at_middle[:1] + at_center + at_middle[1:]))


@dataclass
class QualityJob:
    method: str
    lr: float
    weight_decay: float
    steps: int
    batch_size: int
    rank: int
    seed: int
    train: list  # encoded examples {"input_ids", "labels"}
    val_records: list  # raw records (for generation) of the validation split
    heldout_path: str
    threads: int = 1
    max_new_tokens: int = 16
    evaluate_val: bool = True
    evaluate_heldout: bool = True
    stage: str = "search"  # "search" or "seeds": which part of the protocol the run belongs to
    model: str = "tiny"  # the base: the tiny model, or a model alias / directory (spiel.io.base_model)
    label_logits_only: bool = False  # the head only at label positions (plain_loop.label_position_loss)
    target_modules: tuple | None = None  # None: the method's default (every projection of every block)


def split_records(records: list, n_val: int, seed: int) -> tuple[list, list]:
    """(train, validation): a seeded random ``n_val`` of ``records`` for validation, the rest to train."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    val = set(order[:n_val])
    return [r for i, r in enumerate(records) if i not in val], [records[i] for i in sorted(val)]


def encode(records: list, tokenizer, max_seq_len: int = 256) -> list[dict]:
    from spiel.data.encode import encode_many

    return encode_many([r["messages"] for r in records], tokenizer, max_seq_len)


@torch.no_grad()
def answer_loss(model, examples: list[dict], pad_id: int, batch_size: int = 64) -> float:
    """Mean cross-entropy over all answer tokens (labels != -100) of ``examples``."""
    from spiel.data.collator import DataCollatorForSpiel

    collate = DataCollatorForSpiel(pad_token_id=pad_id)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = collate(examples[i : i + batch_size])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        lp = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum"
        )
        total += float(lp)
        count += int((labels != -100).sum())
    model.train(was_training)
    return total / max(1, count)


def wrap_shira(model, rank: int, lr: float, weight_decay: float, seed: int):
    """``(model, optimizer)``: peft's SHiRA on LoRA's seven projections, ``r·(in+out)`` random entries per
    matrix (the same total as SpIEL's rank-equivalent budget, which spreads it by matrix size instead),
    values trained with torch's AdamW (its decay pulls them toward 0, the pretrained weights)."""
    from peft import ShiraConfig, get_peft_model

    targets = list(method_config("lora", rank).target_modules)
    model = get_peft_model(
        model, ShiraConfig(r=rank, mask_type="random", random_seed=seed, target_modules=targets)
    )
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def train(job: QualityJob, base_model, tokenizer) -> tuple[object, dict]:
    """Fine-tune a copy of ``base_model`` as ``job`` says; returns (model, {"trainable", "train_loss", ...})."""
    torch.manual_seed(job.seed)
    base, overrides = parse_method(job.method)
    if base == "shira":
        model, optimizer = wrap_shira(copy.deepcopy(base_model), job.rank, job.lr, job.weight_decay, job.seed)
    else:
        mcfg = method_config(paper_method(base), job.rank, lr=job.lr, weight_decay=job.weight_decay)
        for key, value in overrides.items():
            if not hasattr(mcfg, key):
                raise ValueError(f"{job.method}: {paper_method(base)} has no setting {key!r}")
            setattr(mcfg, key, value)
        if job.target_modules is not None:
            mcfg.target_modules = list(job.target_modules)
        model, optimizer = wrap_for_training(
            base, copy.deepcopy(base_model), mcfg, seed=job.seed, quantized=False
        )
    selector = model.make_selector(optimizer, total_steps=job.steps) if reselects(base) else None
    start = time.perf_counter()
    losses = train_steps(
        model,
        optimizer,
        job.train,
        steps=job.steps,
        batch_size=job.batch_size,
        seed=job.seed,
        pad_token_id=tokenizer.pad_token_id,
        selector=selector,
        label_logits_only=job.label_logits_only,
    )
    if selector is not None:
        selector.close()
    model.eval()
    tail = losses[-max(1, len(losses) // 10) :]
    return model, {
        "trainable": trainable_count(base, model),
        "train_loss": sum(tail) / len(tail),
        "train_s": time.perf_counter() - start,
    }


def load_base(name: str = "tiny") -> tuple[object, object]:
    """(model, tokenizer) of a benchmark base: the tiny model, or a model alias / directory on the CPU."""
    if name == "tiny":
        from spiel.testing import tiny_model, tiny_tokenizer

        return tiny_model(), tiny_tokenizer()
    from spiel.io.base_model import load_base_model, load_tokenizer

    return load_base_model(name, dtype="float32", device="cpu"), load_tokenizer(name)


def run_job(job: QualityJob) -> dict:
    """Train one (method, lr, λ, seed) and score it on validation and/or held-out data, with the support's
    concentration for the sparse methods. Runs in a worker process."""
    from spiel.eval.demo import evaluate_demo, load_demo

    torch.set_num_threads(job.threads)
    base_model, tokenizer = load_base(job.model)
    model, stats = train(job, base_model, tokenizer)
    del base_model
    pad_id = tokenizer.pad_token_id
    result = {
        "method": job.method,
        "stage": job.stage,
        "lr": job.lr,
        "weight_decay": job.weight_decay,
        "seed": job.seed,
        **stats,
    }
    if job.evaluate_val:
        with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
            val_path = Path(tmp) / "val.jsonl"
            val_path.write_text("".join(json.dumps(r) + "\n" for r in job.val_records))
            val = evaluate_demo(model, tokenizer, val_path, batch_size=64, max_new_tokens=job.max_new_tokens)
        result.update(
            val_exact_match=val["exact_match"],
            val_loss=answer_loss(model, encode(job.val_records, tokenizer), pad_id),
        )
    if job.evaluate_heldout:
        held = load_demo(job.heldout_path)
        scored = evaluate_demo(
            model, tokenizer, job.heldout_path, batch_size=64, max_new_tokens=job.max_new_tokens
        )
        result.update(
            exact_match=scored["exact_match"],
            per_skill=scored["per_skill"],
            heldout_loss=answer_loss(model, encode(held, tokenizer), pad_id),
        )
    if getattr(model, "deltas", None):
        result["support"] = concentration_by_projection(model.deltas)
    return result


def pick(results: list[dict]) -> dict:
    """The validation winner: highest validation exact match, then lowest validation loss."""
    return min(results, key=lambda r: (-r["val_exact_match"], r["val_loss"]))
