"""A checkpoint that cannot be read as it was saved is never deleted and never resumed past: resume=auto
(and an explicit resume=) refuses, naming the file and the damage, and says what still works. Checkpoints
here are small sealed directories with the files a resume unpickles; no training runs."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from spiel.training.engine import atomic_checkpoints as checkpoints
from spiel.training.engine.rundir import RunDirError, check_resumable, prepare_run_dir
from tests.helpers.runs import run_cli


class Planted:
    """What a tampered optimizer.pt would carry: unpickling it runs os.system."""

    def __reduce__(self):
        return os.system, ("true",)


def make_checkpoint(run_dir, step: int):
    path = run_dir / f"checkpoint-{step}"
    path.mkdir(parents=True)
    torch.save(
        {"state": {0: {"exp_avg": torch.ones(4)}}, "param_groups": [{"lr": 0.1}]}, path / "optimizer.pt"
    )
    torch.save({"last_epoch": step}, path / "scheduler.pt")
    (path / "spiel_delta.safetensors").write_bytes(b"delta")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    checkpoints.seal(path)
    return path


def truncated(path):
    path.write_bytes(path.read_bytes()[:100])


def flipped(path):  # same size: the marker's size check cannot see it
    data = path.read_bytes()
    path.write_bytes(bytes(len(data) // 2) + data[len(data) // 2 :])


def planted(path):  # re-sealed, as whoever planted it would
    torch.save({"state": Planted()}, path)
    checkpoints.seal(path.parent)


def run_with_checkpoints(tmp_path):
    run_dir = tmp_path / "run"
    return run_dir, [make_checkpoint(run_dir, step) for step in (2, 4)]


@pytest.mark.parametrize(
    "damage,why",
    [
        (truncated, "bytes, the marker records"),
        (flipped, "damaged"),
        (planted, "Python objects other than tensors.* never loaded with weights_only=False"),
    ],
)
def test_resume_auto_with_every_optimizer_damaged_deletes_nothing_and_says_why(tmp_path, damage, why):
    run_dir, saved = run_with_checkpoints(tmp_path)
    for path in saved:
        damage(path / "optimizer.pt")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(
        RunDirError, match=f"cannot resume: .*checkpoint-4/optimizer.pt is .*{why}"
    ) as refused:
        prepare_run_dir(run_dir, "auto", overwrite=False)
    message = str(refused.value)
    assert "Nothing was deleted" in message and "spiel-eval ckpt=" in message and "overwrite=true" in message
    assert "1 other checkpoint(s) are damaged too" in message and "intact here: none" in message
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_a_damaged_newest_checkpoint_is_not_silently_skipped_for_an_older_one(tmp_path):
    run_dir, (older, newest) = run_with_checkpoints(tmp_path)
    flipped(newest / "scheduler.pt")
    with pytest.raises(
        RunDirError, match=r"checkpoint-4/scheduler.pt is damaged.*intact here: \['checkpoint-2'\]"
    ):
        prepare_run_dir(run_dir, "auto", overwrite=False)
    with pytest.raises(RunDirError, match="checkpoint-4/scheduler.pt"):  # an explicit resume= too
        check_resumable(run_dir, str(newest))
    check_resumable(run_dir, str(older))  # the intact one the message offers
    assert prepare_run_dir(run_dir, str(older), overwrite=False) == older


def test_intact_checkpoints_and_an_interrupted_rotation_resume(tmp_path):
    run_dir, (older, newest) = run_with_checkpoints(tmp_path)
    assert prepare_run_dir(run_dir, "auto", overwrite=False) == newest
    (older / checkpoints.MARKER).unlink()  # a rotation killed after removing the marker, before the files
    assert prepare_run_dir(run_dir, "auto", overwrite=False) == newest
    (newest / checkpoints.MARKER).unlink()  # no intact checkpoint left: nothing is deleted either
    with pytest.raises(RunDirError, match="checkpoint_complete.json is missing"):
        prepare_run_dir(run_dir, "auto", overwrite=False)
    assert older.is_dir() and newest.is_dir()


def test_spiel_train_refuses_with_one_message_before_touching_the_run_dir(tmp_path, capsys):
    run_dir, saved = run_with_checkpoints(tmp_path / "out")
    for path in saved:
        truncated(path / "optimizer.pt")
    before = sorted(p.name for p in run_dir.iterdir())
    code = run_cli([f"output_root={tmp_path / 'out'}", "run_name=run", "resume=auto", "debug=smoke"])
    err = capsys.readouterr().err
    assert code == 2 and "spiel-train: error: cannot resume:" in err and "optimizer.pt" in err, err
    assert "Traceback" not in err
    assert sorted(p.name for p in run_dir.iterdir()) == before  # no .hydra/, no train.log, nothing deleted


def test_the_planted_object_is_refused_by_the_safe_loader_itself(tmp_path):
    planted(tmp_path / "x.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(tmp_path / "x.pt", weights_only=True)
