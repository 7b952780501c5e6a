"""The run's best validation loss and its step reach the logger's run summary as they are in summary.json:
the wandb run summary (logger=wandb) and TensorBoard's hparams metric (logger=tensorboard)."""

import sys

import pytest

from spiel.training.loggers import tensorboard_logger, wandb_logger
from tests.helpers.runs import SMALL, SPIEL_FAST, only_run_dir, run_cli, summary

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning"
)
# four steps, validating on a quarter of the examples every two: two eval losses to pick the best from
VALIDATED = [a for a in SMALL if not a.startswith("max_steps")] + [
    "max_steps=4",
    *SPIEL_FAST,
    "eval_fraction=0.25",
    "eval_steps=2",
]


def eval_records(run_dir):
    import json

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]


@pytest.mark.slow
def test_wandb_run_summary_holds_the_best_eval_loss_and_its_step(tmp_path, monkeypatch):
    """A real wandb run (WANDB_MODE=disabled keeps its summary in memory); its summary is read when the
    job finishes it."""
    import wandb

    finished = []
    real_finish = wandb.finish

    def finish(*args, **kwargs):
        finished.append(dict(wandb.run.summary))
        return real_finish(*args, **kwargs)

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr(wandb, "finish", finish)
    try:
        assert run_cli([f"output_root={tmp_path}", *VALIDATED, "logger=wandb"]) == 0
    finally:
        wandb.teardown()  # wandb keeps its settings (mode disabled) per process: later in-process runs need a fresh one
    run_dir = only_run_dir(tmp_path)
    evals = eval_records(run_dir)
    assert [step for step, _ in evals] == [2, 4]
    best_step, best = min(evals, key=lambda e: (e[1], e[0]))
    s = summary(run_dir)
    assert (s["best_eval_loss"], s["best_eval_step"]) == (best, best_step)
    (run_summary,) = finished
    assert run_summary["best_eval_loss"] == best and run_summary["best_eval_step"] == best_step


class FakeRun:
    def __init__(self):
        self.summary = {}


def test_record_summary_sets_only_what_the_run_has(monkeypatch):
    fake = type(sys)("wandb")
    fake.run = FakeRun()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    wandb_logger.record_summary({"best_eval_loss": 1.25, "best_eval_step": 6, "final_loss": 2.0})
    assert fake.run.summary == {"best_eval_loss": 1.25, "best_eval_step": 6}
    fake.run = FakeRun()
    wandb_logger.record_summary({"final_loss": 2.0})  # no validation set: nothing to record
    assert fake.run.summary == {}
    fake.run = None
    wandb_logger.record_summary({"best_eval_loss": 1.25, "best_eval_step": 6})  # no run: nothing, no error


def test_flat_hparams_keeps_what_tensorboard_takes():
    config = {
        "lr": 1e-3,
        "method": {"name": "ag", "rank_equiv": 4, "targets": ["q_proj", "v_proj"]},
        "resume": None,
        "progress_bar": False,
    }
    assert tensorboard_logger.flat_hparams(config) == {
        "lr": 1e-3,
        "method/name": "ag",
        "method/rank_equiv": 4,
        "method/targets": "['q_proj', 'v_proj']",
        "progress_bar": False,
    }


@pytest.mark.slow
def test_tensorboard_hparams_carry_the_best_eval_loss_at_its_step(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    assert run_cli([f"output_root={tmp_path}", *VALIDATED, "logger=tensorboard", "method.lr=0.002"]) == 0
    run_dir = only_run_dir(tmp_path)
    (events_dir,) = (run_dir / "runs").iterdir()  # the Trainer's own event directory, no second one
    events = EventAccumulator(str(events_dir))
    events.Reload()
    best_step, best = min(eval_records(run_dir), key=lambda e: (e[1], e[0]))
    (logged,) = events.Scalars(tensorboard_logger.METRIC)
    assert (logged.step, logged.value) == (best_step, pytest.approx(best, rel=1e-6))
    assert [s.step for s in events.Scalars("eval/loss")] == [2, 4]
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["method/lr"].number_value == pytest.approx(0.002)
    assert hparams["method/name"].string_value == "ag"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == [tensorboard_logger.METRIC]
