"""spiel-train -m hparams_search=demo: the Optuna sweeper runs trials on the demo and picks the one with the
lowest held-out loss."""

import json

import pytest
import yaml

from tests.helpers.runs import SMALL, run_cli

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning"
)


@pytest.mark.slow
def test_optuna_search_runs_two_trials_and_reports_the_best(tmp_path):
    assert (
        run_cli(["-m", "hparams_search=demo", "hydra.sweeper.n_trials=2", f"output_root={tmp_path}", *SMALL])
        == 0
    )
    (sweep,) = (tmp_path / "multirun").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 2
    trials = []
    for job in jobs:
        summary = json.loads((job / "summary.json").read_text())
        config = yaml.safe_load((job / "config.yaml").read_text())
        assert 0.003 <= config["method"]["lr"] <= 0.3 and config["method"]["reselection_steps"] in (
            10,
            20,
            40,
        )
        assert config["eval_fraction"] == 0.1 and summary["best_eval_loss"] > 0
        trials.append(
            (summary["best_eval_loss"], config["method"]["lr"], config["method"]["reselection_steps"])
        )
    assert trials[0][1:] != trials[1][1:]  # two different points were tried
    best = min(trials)
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(best[0])
    assert result["best_params"] == {"method.lr": pytest.approx(best[1]), "method.reselection_steps": best[2]}
