"""Validation while training: eval loss every eval_steps and at the end, in metrics.jsonl and summary.json,
loss.png; the eval loss equals the model's plain loss over the held-out examples."""

import json

import pytest
import torch

from spiel.testing import DEMO_DIR
from tests.helpers.runs import SMALL, SPIEL_FAST, only_run_dir, run_cli, summary

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
# SMALL with a checkpoint every 2 steps and 4 steps in all
FOUR_STEPS = [*SMALL, "max_steps=4"]


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _batch_mean_loss(model, dataset, batch_size):
    """The Trainer's eval loss, computed plainly: the examples in order, in batches of `batch_size`; per
    batch the mean cross-entropy over its label tokens; the batches' means averaged (weighted by size).
    Each example runs alone (no padding), so the per-token losses are those of an unpadded forward."""
    means, sizes = [], []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            total, count = 0.0, 0
            rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            for row in rows:
                logits = model(input_ids=torch.tensor([row["input_ids"]])).logits[0, :-1]
                target = torch.tensor(row["labels"][1:])
                keep = target != -100
                total += float(torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum"))
                count += int(keep.sum())
            means.append(total / count)
            sizes.append(len(rows))
    return sum(m * n for m, n in zip(means, sizes, strict=True)) / sum(sizes)


@pytest.mark.slow
def test_eval_fraction_every_two_steps_and_at_the_end(tmp_path):
    from spiel.data import build_train_dataset
    from spiel.model.spiel_model import SpielModel
    from spiel.testing import tiny_model, tiny_tokenizer
    from spiel.training.loggers.validation import eval_split

    args = [f"output_root={tmp_path}", *FOUR_STEPS, *SPIEL_FAST, "eval_fraction=0.25", "eval_steps=2"]
    assert run_cli(args) == 0
    run_dir = only_run_dir(tmp_path)
    evals = [(r["step"], r["eval_loss"]) for r in _records(run_dir) if "eval_loss" in r]
    assert [step for step, _ in evals] == [2, 4]  # every 2 steps; the end (4) is not evaluated twice
    s = summary(run_dir)
    best_step, best = min(evals, key=lambda e: e[1])
    assert s["best_eval_loss"] == best and s["best_eval_step"] == best_step and s["eval_loss"] == evals[-1][1]
    assert (run_dir / "loss.png").stat().st_size > 1000
    # the logged final eval loss is the trained model's loss over the held-out 25% (micro-batches of 2)
    cfg = json.loads(json.dumps(__import__("yaml").safe_load((run_dir / "config.yaml").read_text())))
    tok = tiny_tokenizer()
    dataset, _ = build_train_dataset(cfg["data"], tok, max_seq_len=cfg["max_seq_len"])

    class C:
        eval_data, eval_fraction = None, 0.25

    train, held_out = eval_split(dataset, C, tok, cfg["data"], build_train_dataset)
    assert len(held_out) == 12 and len(train) == 36  # of the 48 capped examples
    model = SpielModel.from_pretrained(tiny_model(), run_dir / "final")
    assert evals[-1][1] == pytest.approx(_batch_mean_loss(model, held_out, batch_size=2), rel=1e-4)


@pytest.mark.slow
def test_eval_data_file_only_at_the_end(tmp_path):
    heldout = tmp_path / "val.jsonl"
    heldout.write_text("".join((DEMO_DIR / "heldout.jsonl").read_text().splitlines(keepends=True)[:6]))
    assert run_cli([f"output_root={tmp_path / 'runs'}", *SMALL, *SPIEL_FAST, f"eval_data={heldout}"]) == 0
    run_dir = only_run_dir(tmp_path / "runs")
    evals = [r for r in _records(run_dir) if "eval_loss" in r]
    assert [r["step"] for r in evals] == [3]
    assert summary(run_dir)["best_eval_loss"] == evals[0]["eval_loss"]


def test_no_held_out_set_means_no_eval_keys(tmp_path):
    from spiel.training.loggers.validation import eval_summary, plot_losses

    log = tmp_path / "metrics.jsonl"
    log.write_text(
        '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 2, "eval_lo'
    )  # cut by a kill
    assert eval_summary(log) == {}
    assert plot_losses(log, tmp_path / "loss.png").stat().st_size > 1000


def test_best_eval_loss_is_the_minimum_and_its_step(tmp_path):
    from spiel.training.loggers.validation import eval_summary

    log = tmp_path / "metrics.jsonl"
    log.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {"step": 10, "loss": 3.0},
                {"step": 10, "eval_loss": 2.5},
                {"step": 20, "eval_loss": 2.1},
                {"step": 30, "eval_loss": 2.3},
            ]
        )
    )
    assert eval_summary(log) == {"eval_loss": 2.3, "best_eval_loss": 2.1, "best_eval_step": 20}


BAD = [
    (["eval_fraction=1.0"], "eval_fraction: must be in [0, 1)"),
    (["eval_fraction=0.1", "eval_data=assets/demo/heldout.jsonl"], "eval_data: set eval_fraction"),
    (["eval_data=/no/such/file.jsonl"], "eval_data: /no/such/file.jsonl is not a file"),
    (["eval_steps=-1"], "eval_steps: must be >= 0"),
    (["eval_steps=10"], "eval_steps: evaluating needs a held-out set"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_validation_settings_are_config_errors(overrides, message):
    from hydra import compose, initialize_config_dir

    from spiel.paths import CONFIG_DIR
    from spiel.training.config.hydra_config import ConfigError, validate

    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name="train", overrides=overrides)
    with pytest.raises(
        ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")
    ):
        validate(cfg)


def test_a_fraction_that_leaves_no_training_examples_is_refused():
    from datasets import Dataset

    from spiel.training.loggers.validation import eval_split

    class C:
        eval_data, eval_fraction = None, 0.5

    with pytest.raises(ValueError, match="eval_fraction=0.5 leaves no training examples of 1"):
        eval_split(Dataset.from_list([{"input_ids": [1, 2], "labels": [1, 2]}]), C, None, {"seed": 1}, None)
    train, held_out = eval_split(Dataset.from_list([{"x": i} for i in range(10)]), C, None, {"seed": 1}, None)
    assert len(train) == len(held_out) == 5
    assert sorted(r["x"] for r in train) + sorted(r["x"] for r in held_out) != list(range(10))  # shuffled
    assert sorted([r["x"] for r in train] + [r["x"] for r in held_out]) == list(
        range(10)
    )  # disjoint, complete
