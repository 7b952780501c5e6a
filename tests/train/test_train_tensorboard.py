"""logger=tensorboard: the Trainer's TensorBoard event files in the run dir hold the logged losses."""

import json

import pytest

from spiel.training.config.hydra_config import ConfigError, validate
from tests.helpers.runs import SMALL, only_run_dir, run_cli

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning"
)


def _make(*overrides):
    from hydra import compose, initialize_config_dir

    from spiel.paths import CONFIG_DIR

    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return compose(config_name="train", overrides=list(overrides))


@pytest.mark.slow
def test_tensorboard_events_hold_the_metrics_log_losses(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert run_cli([f"output_root={tmp_path}", *SMALL, "logger=tensorboard"]) == 0
    run_dir = only_run_dir(tmp_path)
    (events_dir,) = (run_dir / "runs").iterdir()
    events = EventAccumulator(str(events_dir))
    events.Reload()
    logged = {s.step: s.value for s in events.Scalars("train/loss")}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    expected = {r["step"]: r["loss"] for r in records if "loss" in r}
    assert sorted(logged) == sorted(expected) == [1, 2, 3]
    for step, loss in expected.items():
        assert logged[step] == pytest.approx(loss, rel=1e-6)
    # a second run in the same dir with overwrite=true starts a clean event log
    assert run_cli([f"output_root={tmp_path}", *SMALL, "logger=tensorboard", "overwrite=true"]) == 0
    assert len(list((run_dir / "runs").iterdir())) == 1


def test_tensorboard_missing_is_a_config_error(monkeypatch):
    import sys

    validate(_make("logger=tensorboard"))
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # not installed
    with pytest.raises(
        ConfigError, match=r"logger=tensorboard needs the tensorboard package.*spiel\[tensorboard\]"
    ):
        validate(_make("logger=tensorboard"))
