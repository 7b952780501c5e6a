"""Resume continues the same run or is refused naming what changed, and deletes nothing: a checkpoint's
files are checked against the SHA-256 manifest sealed with it, and the training data against the content
fingerprint recorded when the run started (a file edited in place keeps its path, so its config)."""

import json
import shutil

import pytest

from spiel.training.engine import atomic_checkpoints as checkpoints
from spiel.training.engine.rundir import checkpoint_damage
from tests.helpers.paths import REPO
from tests.helpers.runs import SMALL, only_run_dir, run_cli

BASE = [*SMALL, "max_steps=4", "save_steps=2", "method.rank_equiv=2", "save_total_limit=5"]


@pytest.fixture
def stopped(tmp_path):
    """A run stopped after checkpoint-2 (what a kill leaves), on its own copy of the demo data."""
    data = tmp_path / "train.jsonl"
    shutil.copy(REPO / "assets" / "demo" / "train.jsonl", data)
    args = [f"output_root={tmp_path / 'out'}", *BASE, f"data.sources.0.path={data}"]
    assert run_cli(args) == 0
    run_dir = only_run_dir(tmp_path / "out")
    for name in ("final", "checkpoint-4", "summary.json"):
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return args, run_dir, data


def checkpoint_bytes(run_dir):
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.glob("checkpoint-*/**/*"))
        if p.is_file()
    }


def test_every_checkpoint_file_is_in_its_manifest(stopped):
    _, run_dir, _ = stopped
    marker = json.loads((run_dir / "checkpoint-2" / checkpoints.MARKER).read_text())
    assert set(marker["sha256"]) == set(marker["files"]) and "optimizer.pt" in marker["sha256"]
    assert checkpoint_damage(run_dir / "checkpoint-2") is None


def test_a_flipped_bit_in_optimizer_pt_is_refused_naming_the_file(stopped, capsys):
    args, run_dir, _ = stopped
    path = run_dir / "checkpoint-2" / "optimizer.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size: only the hash tells
    path.write_bytes(bytes(data))
    before = checkpoint_bytes(run_dir)
    assert run_cli([*args, "resume=auto"]) == 2
    err = capsys.readouterr().err
    assert (
        f"cannot resume: {path} is damaged: its SHA-256 differs from the one checkpoint_complete.json recorded"
        in err
    )
    assert "Nothing was deleted" in err and "overwrite=true" in err and "Traceback" not in err
    assert checkpoint_bytes(run_dir) == before and not (run_dir / "final").exists()


def test_data_edited_in_place_is_refused_on_resume_and_the_override_continues(stopped, capsys):
    args, run_dir, data = stopped
    lines = data.read_text().splitlines(keepends=True)
    data.write_text("".join(lines[1:] + lines[:1]))  # same records, same path and size: another run's order
    before = checkpoint_bytes(run_dir)
    assert run_cli([*args, "resume=auto"]) == 2
    err = capsys.readouterr().err
    assert "resume: the training data changed since this run started" in err
    assert f"source(s) demo ({data})" in err and "resume_allow_config_changes=true" in err
    assert checkpoint_bytes(run_dir) == before and not (run_dir / "final").exists()
    assert run_cli([*args, "resume=auto", "resume_allow_config_changes=true"]) == 0
    assert (run_dir / "final").is_dir()


@pytest.mark.parametrize(
    "text, why",
    [
        ('{"files": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
        ('{"files": {"a": ' + "1" * 5000 + "}}", "holds a number Python will not parse"),
    ],
    ids=["deep", "huge-integer"],
)
def test_a_manifest_python_cannot_parse_is_damage_not_a_traceback(tmp_path, text, why):
    (tmp_path / checkpoints.MARKER).write_text(text)
    file, problem = checkpoint_damage(tmp_path)
    assert file == checkpoints.MARKER and problem.startswith("unreadable") and why in problem
    assert not checkpoints.is_complete(tmp_path)
