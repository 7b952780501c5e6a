"""Resume continues the same run or says why not: a checkpoint is only resumed with the config it was
trained with (on every key that changes what is trained), and a refused resume leaves the run dir
exactly as it was."""

import shutil

import pytest
import yaml
from omegaconf import OmegaConf

from spiel.config import CONFIG_DIR
from spiel.training.resume_check import NEUTRAL_KEYS, check_resume_config, config_differences
from spiel.training.rundir import RunDirError
from tests.helpers.paths import REPO
from tests.helpers.runs import SMALL, only_run_dir, run_cli

BASE = [*[a for a in SMALL if not a.startswith("max_steps")], "max_steps=2", "method.rank_equiv=2",
        "run_name=same", "lr=0.03"]


def snapshot(run_dir):
    """Every file under the run dir with its bytes (and every directory)."""
    return {str(p.relative_to(run_dir)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(run_dir.rglob("*"))}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_cfg")
    data = root / "other.jsonl"
    shutil.copy(REPO / "assets" / "demo" / "train.jsonl", data)
    assert run_cli([f"output_root={root}", *BASE]) == 0
    return root, only_run_dir(root), data


@pytest.mark.parametrize("change,shown", [
    ("lr=0.001", "lr 0.03 -> 0.001"),
    ("seed=7", "seed 42 -> 7"),
    ("data.sources.0.path={data}", "data.sources.0.path"),
])
def test_resume_with_a_different_training_config_is_refused_and_touches_nothing(trained, capsys, change, shown):
    root, run_dir, data = trained
    before = snapshot(run_dir)
    code = run_cli([f"output_root={root}", *BASE, change.format(data=data), "resume=auto"])
    err = capsys.readouterr().err
    assert code == 2
    assert "spiel-train: error: resume:" in err and shown in err and "resume_allow_config_changes=true" in err
    assert "Traceback" not in err
    assert snapshot(run_dir) == before  # config.yaml, .hydra/, train.log, metrics, checkpoints: as they were


def test_keys_that_do_not_change_training_may_differ_and_the_override_accepts_the_rest(trained, capsys):
    root, run_dir, _ = trained
    assert run_cli([f"output_root={root}", *BASE, "logging_steps=5", "save_total_limit=3", "resume=auto"]) == 0
    assert run_cli([f"output_root={root}", *BASE, "lr=0.001", "resume=auto",
                    "resume_allow_config_changes=true"]) == 0
    assert OmegaConf.load(run_dir / "config.yaml").lr == 0.001


def test_a_run_dir_without_its_config_is_not_resumed_unchecked(tmp_path):
    ckpt = tmp_path / "run" / "checkpoint-2"
    ckpt.mkdir(parents=True)
    cfg = OmegaConf.create({"lr": 0.1})
    with pytest.raises(RunDirError, match=r"config.yaml is missing or unreadable.*resume_allow_config_changes"):
        check_resume_config(ckpt, cfg)
    check_resume_config(ckpt, cfg, allow_changes=True)
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({"lr": 0.1, "method": {"betas": [0.9, 0.99]}}))
    with pytest.raises(RunDirError, match=r"method.betas.1 0.99 -> 0.999"):
        check_resume_config(ckpt, OmegaConf.create({"lr": 0.1, "method": {"betas": [0.9, 0.999]}}))


def test_the_neutral_keys_are_the_ones_left_out_of_run_dir_names():
    excluded = OmegaConf.load(CONFIG_DIR / "train.yaml").hydra.job.config.override_dirname.exclude_keys
    assert set(NEUTRAL_KEYS) == {k for k in excluded if "." not in k}
    assert config_differences({"lr": 1.0, "save_steps": 2, "logger": {"name": "none"}},
                              {"lr": 1.0, "save_steps": 9, "logger": {"name": "wandb"}}) == []
    assert config_differences({"lr": 1.0}, {"lr": 1.0, "max_steps": 9}) == [("max_steps", "(absent)", 9)]
