"""Regression on the demo task: with the shipped demo defaults (``spiel-train`` with ``model=tiny``,
``method=ag``: its lr, λ and rank-equivalent budget), SpIEL-AG's reselection must beat the same layer
with its random indices never reselected (static random sparsity) at equal budget, by more than the
spread between seeds measured for this test's settings (see MARGIN).

Shortened for CI: STEPS optimizer steps of the demo's batch size, scored on the first HELDOUT held-out
examples (loss on the answer tokens, and greedy exact match)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from spiel.bench.quality import QualityJob, answer_loss, encode, train
from spiel.eval.demo import DEMO_HELDOUT, evaluate_demo, load_demo
from spiel.testing import DEMO_DIR, tiny_model, tiny_tokenizer

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
STEPS = 80
HELDOUT = 100
SEED = 1
# Measured at these settings with seeds 1-3 (see the README's quality section): the largest seed-to-seed
# range of held-out loss of either method was below MARGIN, and AG's mean lead over static above it.
MARGIN = 0.05


def demo_defaults() -> dict:
    """lr, λ, budget and batch size that ``spiel-train`` (model=tiny, method=ag) resolves to."""
    import spiel.config  # noqa: F401  (registers the config schemas with Hydra)

    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name="train", overrides=["model=tiny", "method=ag"])
    lr = cfg.lr if "lr" in cfg else cfg.method.lr
    wd = cfg.weight_decay if "weight_decay" in cfg else cfg.method.weight_decay
    return {"lr": float(lr), "weight_decay": float(wd), "rank": int(cfg.method.rank_equiv),
            "batch_size": int(cfg.batch_size)}


def demo_run(method: str, seed: int, steps: int = STEPS, heldout: int = HELDOUT) -> dict:
    """Train ``method`` (ag or static) with the demo defaults; held-out answer loss and exact match."""
    d = demo_defaults()
    tok = tiny_tokenizer()
    job = QualityJob(method=method, lr=d["lr"], weight_decay=d["weight_decay"], steps=steps,
                     batch_size=d["batch_size"], rank=d["rank"], seed=seed,
                     train=encode(load_demo(DEMO_DIR / "train.jsonl"), tok), val_records=[], heldout_path="")
    model, _ = train(job, tiny_model(), tok)
    records = load_demo(DEMO_HELDOUT, heldout)
    em = evaluate_demo(model, tok, limit=heldout, batch_size=64)["exact_match"]
    return {"loss": answer_loss(model, encode(records, tok), tok.pad_token_id), "exact_match": em}


@pytest.mark.slow
def test_spiel_ag_beats_static_random_sparsity_on_the_demo():
    import torch

    torch.set_num_threads(2)
    ag, static = demo_run("ag", SEED), demo_run("static", SEED)
    assert static["loss"] - ag["loss"] > MARGIN, (ag, static)
    assert ag["exact_match"] > static["exact_match"], (ag, static)
