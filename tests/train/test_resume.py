"""Resume: training continues exactly where it stopped, or is refused with the reason.

- The library: a SpielModel, its optimizer and selector saved mid-run and loaded in a fresh process
  continue bit for bit; a selector state is refused on a delta without its growth steps.
- spiel-train: checkpoints are complete or absent, and a run killed with SIGKILL resumes (resume=auto) to
  exactly the delta, optimizer state, selector state and losses of an uninterrupted run.
- The config check: a checkpoint is only resumed with the config it was trained with (on every key that
  changes what is trained), and a refused resume leaves the run dir exactly as it was.
"""

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from safetensors.torch import load_file

from spiel import SpielConfig, get_spiel_model
from spiel.model.spiel_model import SpielModel
from spiel.paths import CONFIG_DIR
from spiel.training.config.resume_check import NEUTRAL_KEYS, check_resume_config, config_differences
from spiel.training.engine import atomic_checkpoints as checkpoints
from spiel.training.engine.rundir import RunDirError
from tests.helpers.paths import REPO, WORKERS
from tests.helpers.runs import SMALL, load_tensors, only_run_dir, popen_cli, run_cli
from tests.workers.resume_worker import base

# --- the library: model, optimizer and selector state across processes (tests/workers/resume_worker.py)


def run_worker(*args):
    subprocess.run([sys.executable, *map(str, args)], check=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ag", "ma"])
def test_resume_in_a_fresh_process_is_bit_identical(tmp_path, method):
    # 40 steps with reselections every 6 (estimation 2): stopping at 13 lands mid-estimation-phase.
    run_worker(WORKERS / "resume_worker.py", method, 0, 40, tmp_path / "straight")
    run_worker(WORKERS / "resume_worker.py", method, 0, 13, tmp_path / "first")
    run_worker(WORKERS / "resume_worker.py", method, 13, 40, tmp_path / "resumed", tmp_path / "first")
    straight = load_file(tmp_path / "straight" / "spiel_delta.safetensors")
    resumed = load_file(tmp_path / "resumed" / "spiel_delta.safetensors")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    opt_a = torch.load(tmp_path / "straight" / "optimizer.pt")["state"]
    opt_b = torch.load(tmp_path / "resumed" / "optimizer.pt")["state"]
    for pid in opt_a:
        for key in opt_a[pid]:
            assert torch.equal(opt_a[pid][key], opt_b[pid][key]), (pid, key)


def test_a_selector_state_refuses_a_delta_without_its_growth_steps(tmp_path):
    """A compact (final) checkpoint holds no grown_at, from which AG's Adam ages derive: resuming a selector
    state onto it would silently restart every age, so it is refused; the training form resumes."""
    model = get_spiel_model(
        base(), SpielConfig(method="ag", num_tunable=80, reselection_steps=6, estimation_steps=2, seed=3)
    )
    optimizer = model.make_optimizer(lr=1e-2)
    selector = model.make_selector(optimizer, total_steps=40)
    for step in range(8):  # past the first reselection (step 6): some entries have grown_at > 0
        model(torch.randn(8, 16, generator=torch.Generator().manual_seed(step))).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        selector.step()
    assert any(bool((layer.grown_at > 0).any()) for layer in model.deltas.values())
    state = selector.state_dict()
    model.save_pretrained(tmp_path / "final")  # compact: no grown_at
    model.save_pretrained(tmp_path / "train", compact=False)
    for kind, ok in (("final", False), ("train", True)):
        again = SpielModel.from_pretrained(base(), tmp_path / kind, is_trainable=True)
        fresh = again.make_selector(again.make_optimizer(lr=1e-2), total_steps=40)
        if ok:
            fresh.load_state_dict(state)
        else:
            with pytest.raises(ValueError, match="not a compact final one"):
                fresh.load_state_dict(state)


def _trained_selector(seed: int, steps: int = 8):
    model = get_spiel_model(
        base(), SpielConfig(method="ag", num_tunable=80, reselection_steps=6, estimation_steps=2, seed=seed)
    )
    optimizer = model.make_optimizer(lr=1e-2)
    selector = model.make_selector(optimizer, total_steps=40)
    for step in range(steps):  # past the first reselection (step 6): some entries have grown_at > 0
        model(torch.randn(8, 16, generator=torch.Generator().manual_seed(seed * 100 + step))).pow(
            2
        ).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        selector.step()
    return model, selector


def test_a_selector_state_from_another_run_is_named_as_such(tmp_path):
    """Not blamed on "a compact final checkpoint": the delta is a training one, the state is another's."""
    ours, _ = _trained_selector(seed=3)
    _, theirs = _trained_selector(seed=4)
    ours.save_pretrained(tmp_path / "train", compact=False)
    again = SpielModel.from_pretrained(base(), tmp_path / "train", is_trainable=True)
    fresh = again.make_selector(again.make_optimizer(lr=1e-2), total_steps=40)
    with pytest.raises(ValueError, match="belongs to another delta.*selector.pt from another run") as refused:
        fresh.load_state_dict(theirs.state_dict())
    assert "compact" not in str(refused.value)


def test_spiel_train_reports_a_selector_state_from_another_run_as_one_message(tmp_path):
    """The Trainer's callback turns the selector's refusal into a CheckpointMismatchError naming the file:
    spiel-train lists those as user errors (one message, exit 2), not as a bug with a traceback."""
    from types import SimpleNamespace

    from spiel.checkpoint.fingerprint import CheckpointMismatchError
    from spiel.integrations.selector_callback import STATE_FILE, SelectorCallback
    from spiel.training.engine.failures import as_user_error

    ours, _ = _trained_selector(seed=3)
    _, theirs = _trained_selector(seed=4)
    checkpoint = tmp_path / "checkpoint-8"
    ours.save_pretrained(checkpoint, compact=False)
    torch.save(theirs.state_dict(), checkpoint / STATE_FILE)
    again = SpielModel.from_pretrained(base(), checkpoint, is_trainable=True)
    trainer = SimpleNamespace(
        spiel_model=lambda: again,
        optimizer=again.make_optimizer(lr=1e-2),
        spiel_resume_from=str(checkpoint),
    )
    callback = SelectorCallback(trainer)
    with pytest.raises(CheckpointMismatchError, match="belongs to another delta") as refused:
        callback.on_train_begin(None, SimpleNamespace(max_steps=40, global_step=8), None)
    assert str(checkpoint / STATE_FILE) in str(refused.value)
    assert as_user_error(refused.value, tmp_path) is refused.value


# --- spiel-train: killed, stopped and finished runs

# SpIEL-AG, reselection every 4 steps after 2 of estimation; 16 steps over 1.3 epochs of 48 examples,
# gradient accumulation 2, a checkpoint every 4 steps (all kept).
RUN = [
    "method=ag",
    "method.reselection_steps=4",
    "method.estimation_steps=2",
    "method.rank_equiv=4",
    "method.lr=3e-3",
    "max_steps=16",
    "batch_size=4",
    "micro_batch_size=2",
    "max_seq_len=64",
    "data.sources.0.cap=48",
    "save_steps=4",
    "save_total_limit=10",
    "logging_steps=3",
    "progress_bar=false",
    "device=cpu",
]
# wall-clock fields of metrics.jsonl: the only ones a resumed run may log differently
TIMING = {"time", "train_runtime", "train_samples_per_second", "train_steps_per_second"}


def _run(root, *extra):
    proc = popen_cli([f"output_root={root}", *RUN, *extra], cwd=root)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    return only_run_dir(root)


def _losses(run_dir):
    return {
        r["step"]: r["loss"]
        for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    }


def _metrics(run_dir):
    """metrics.jsonl without its wall-clock fields."""
    return [
        {k: v for k, v in json.loads(line).items() if k not in TIMING}
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_same_delta_and_optimizer_state(tmp_path):
    straight_root, killed_root = tmp_path / "straight", tmp_path / "killed"
    straight_root.mkdir()
    killed_root.mkdir()
    reference = popen_cli([f"output_root={straight_root}", *RUN], cwd=straight_root)  # runs meanwhile
    proc = popen_cli([f"output_root={killed_root}", *RUN], cwd=killed_root)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        runs = [p for p in killed_root.iterdir() if p.is_dir()]
        if runs and checkpoints.is_complete(runs[0] / "checkpoint-4"):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed = only_run_dir(killed_root)
    assert not (killed / "final").exists(), "the run finished before it could be killed"
    newest = checkpoints.latest_checkpoint(killed)
    assert newest is not None and checkpoints.checkpoint_step(newest) < 16

    # What a kill during a save could leave behind must never be resumed from: a half-written staging
    # copy, and a checkpoint-N/ whose files do not match its marker.
    partial = killed / ".staging" / "checkpoint-100"
    shutil.copytree(newest, partial)
    (partial / "optimizer.pt").unlink()
    corrupt = killed / "checkpoint-99"
    shutil.copytree(newest, corrupt)
    with open(corrupt / "spiel_delta.safetensors", "r+b") as f:
        f.truncate(100)
    assert checkpoints.latest_checkpoint(killed) == newest

    out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, out[-4000:]
    straight = only_run_dir(straight_root)
    # a checkpoint whose files differ from its marker is damage a kill cannot make (saves move in whole):
    # resume refuses it by name and deletes nothing; once it is removed, the run resumes from the newest
    refused = popen_cli([f"output_root={killed_root}", *RUN, "resume=auto"], cwd=killed_root)
    err, _ = refused.communicate(timeout=600)
    assert refused.returncode == 2 and "checkpoint-99/spiel_delta.safetensors" in err, err[-3000:]
    assert corrupt.exists() and partial.exists()
    shutil.rmtree(corrupt)
    resumed = _run(killed_root, "resume=auto")
    assert resumed == killed
    assert json.loads((resumed / "summary.json").read_text())["resumed_from"] == str(newest)
    a = load_tensors(straight / "final" / "spiel_delta.safetensors")
    b = load_tensors(resumed / "final" / "spiel_delta.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    grown = [load_tensors(run / "checkpoint-16" / "spiel_delta.safetensors") for run in (straight, resumed)]
    assert all(torch.equal(grown[0][k], grown[1][k]) for k in grown[0] if k.endswith(".grown_at"))
    assert any(
        k.endswith(".grown_at") and int(v.max()) >= 14 for k, v in grown[0].items()
    )  # late reselections

    opt_a = torch.load(straight / "checkpoint-16" / "optimizer.pt", weights_only=True)["state"]
    opt_b = torch.load(resumed / "checkpoint-16" / "optimizer.pt", weights_only=True)["state"]
    assert opt_a.keys() == opt_b.keys()
    for pid in opt_a:
        for key, value in opt_a[pid].items():
            assert torch.equal(value, opt_b[pid][key]), (pid, key)
    sel_a = torch.load(straight / "checkpoint-16" / "selector.pt", weights_only=True)
    sel_b = torch.load(resumed / "checkpoint-16" / "selector.pt", weights_only=True)
    assert sel_a["t"] == sel_b["t"] == 16
    assert _losses(straight) == _losses(resumed)  # same data order after the resume, too
    # logging every 3 steps, checkpoints every 4: the first log after the resume averages steps from
    # before it too, exactly as the uninterrupted run did; the final train_loss is the whole run's
    assert _metrics(straight) == _metrics(resumed)


def test_resumed_run_logs_exactly_the_uninterrupted_metrics(tmp_path):
    """A run stopped after checkpoint-4 (what a kill leaves: later log lines, no final/) and resumed with
    resume=auto writes the same metrics.jsonl as the run that was never stopped (timings aside), with a
    log window (every 3 steps) that spans the resume."""
    args = [
        *SMALL,
        "max_steps=8",
        "save_steps=2",
        "logging_steps=3",
        "save_total_limit=10",
        "method.rank_equiv=2",
    ]
    assert run_cli([f"output_root={tmp_path / 'a'}", *args]) == 0
    straight = only_run_dir(tmp_path / "a")
    stopped = tmp_path / "b" / straight.name
    shutil.copytree(straight, stopped)
    for name in ("final", "checkpoint-6", "checkpoint-8", "summary.json"):
        path = stopped / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert run_cli([f"output_root={tmp_path / 'b'}", *args, "resume=auto"]) == 0
    assert json.loads((stopped / "summary.json").read_text())["resumed_from"] == str(stopped / "checkpoint-4")
    assert [r["step"] for r in _metrics(stopped) if "loss" in r] == [
        1,
        3,
        6,
    ]  # 6: steps 4-6, across the resume
    assert _metrics(straight) == _metrics(stopped)
    a, b = (json.loads((d / "summary.json").read_text()) for d in (straight, stopped))
    assert a["train_loss"] == b["train_loss"] and a["final_loss"] == b["final_loss"]


def test_rerunning_without_resume_refuses_to_mix_runs(tmp_path):
    args = [f"output_root={tmp_path}", *SMALL, "max_steps=1", "method.rank_equiv=2"]
    assert run_cli(args) == 0
    run_dir = only_run_dir(tmp_path)
    assert run_cli(args) != 0  # the dir holds a finished run: resume=auto or overwrite=true
    assert run_cli([*args, "overwrite=true"]) == 0
    assert only_run_dir(tmp_path) == run_dir
    # resuming a finished run (its last checkpoint is at max_steps) trains nothing more
    assert run_cli([*args, "resume=auto"]) == 0
    assert json.loads((run_dir / "summary.json").read_text())["steps_this_run"] == 0
    shutil.rmtree(run_dir / "checkpoint-1")
    assert run_cli([*args, "resume=auto"]) != 0  # finished, and no checkpoint to resume from


def test_seal_publish_and_completeness(tmp_path):
    run = tmp_path / "run"
    staged = checkpoints.staging_dir(run) / "checkpoint-3"
    staged.mkdir(parents=True)
    (staged / "a.bin").write_bytes(b"x" * 10)
    (staged / "sub").mkdir()
    (staged / "sub" / "b.json").write_text("{}")
    assert not checkpoints.is_complete(staged)
    with pytest.raises(RuntimeError):
        checkpoints.publish(staged, run / "checkpoint-3")
    checkpoints.seal(staged, step=3)
    target = checkpoints.publish(staged, run / "checkpoint-3")
    assert checkpoints.is_complete(target) and not staged.exists()
    for step in (6, 9):
        d = checkpoints.staging_dir(run) / f"checkpoint-{step}"
        shutil.copytree(target, d)
        checkpoints.seal(d)
        checkpoints.publish(d, run / f"checkpoint-{step}")
    (run / "checkpoint-12").mkdir()  # no marker: not a checkpoint
    assert checkpoints.latest_checkpoint(run).name == "checkpoint-9"
    (run / "checkpoint-9" / "a.bin").write_bytes(b"short")  # size no longer matches the marker
    assert checkpoints.latest_checkpoint(run).name == "checkpoint-6"
    checkpoints.rotate(run, keep=1)
    assert [p.name for p in checkpoints.complete_checkpoints(run)] == ["checkpoint-6"]
    assert not (run / "checkpoint-3").exists()


def test_lora_resumes_from_an_explicit_checkpoint_to_the_same_adapter(tmp_path):
    """peft's path (adapter reload) and the RNG state (LoRA dropout) through resume=<checkpoint-N>."""
    args = [*SMALL, "max_steps=4", "method=lora", "method.r=4", "method.lr=1e-3"]
    assert run_cli([f"output_root={tmp_path / 'a'}", *args]) == 0
    straight = only_run_dir(tmp_path / "a")
    assert run_cli([f"output_root={tmp_path / 'b'}", *args, f"resume={straight / 'checkpoint-2'}"]) == 0
    resumed = only_run_dir(tmp_path / "b")
    a = load_tensors(straight / "final" / "adapter_model.safetensors")
    b = load_tensors(resumed / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((resumed / "summary.json").read_text())["steps_this_run"] == 2


# --- the config a checkpoint is resumed with

BASE = [*SMALL, "max_steps=2", "method.rank_equiv=2", "run_name=same", "method.lr=0.03"]


def snapshot(run_dir):
    """Every file under the run dir with its bytes (and every directory)."""
    return {
        str(p.relative_to(run_dir)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(run_dir.rglob("*"))
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_cfg")
    data = root / "other.jsonl"
    shutil.copy(REPO / "assets" / "demo" / "train.jsonl", data)
    assert run_cli([f"output_root={root}", *BASE]) == 0
    return root, only_run_dir(root), data


@pytest.mark.parametrize(
    "change,shown",
    [
        ("method.lr=0.001", "method.lr 0.03 -> 0.001"),
        ("seed=7", "seed 42 -> 7"),
        ("data.sources.0.path={data}", "data.sources.0.path"),
    ],
)
def test_resume_with_a_different_training_config_is_refused_and_touches_nothing(
    trained, capsys, change, shown
):
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
    assert (
        run_cli([f"output_root={root}", *BASE, "logging_steps=5", "save_total_limit=3", "resume=auto"]) == 0
    )
    assert (
        run_cli(
            [
                f"output_root={root}",
                *BASE,
                "method.lr=0.001",
                "resume=auto",
                "resume_allow_config_changes=true",
            ]
        )
        == 0
    )
    assert OmegaConf.load(run_dir / "config.yaml").method.lr == 0.001


def test_a_run_dir_without_its_config_is_not_resumed_unchecked(tmp_path):
    ckpt = tmp_path / "run" / "checkpoint-2"
    ckpt.mkdir(parents=True)
    cfg = OmegaConf.create({"lr": 0.1})
    with pytest.raises(
        RunDirError, match=r"config.yaml is missing or unreadable.*resume_allow_config_changes"
    ):
        check_resume_config(ckpt, cfg)
    check_resume_config(ckpt, cfg, allow_changes=True)
    (tmp_path / "run" / "config.yaml").write_text(
        yaml.safe_dump({"lr": 0.1, "method": {"betas": [0.9, 0.99]}})
    )
    with pytest.raises(RunDirError, match=r"method.betas.1 0.99 -> 0.999"):
        check_resume_config(ckpt, OmegaConf.create({"lr": 0.1, "method": {"betas": [0.9, 0.999]}}))


def test_the_neutral_keys_are_the_ones_left_out_of_run_dir_names():
    excluded = OmegaConf.load(CONFIG_DIR / "train.yaml").hydra.job.config.override_dirname.exclude_keys
    assert set(NEUTRAL_KEYS) == {k for k in excluded if "." not in k}
    assert (
        config_differences(
            {"lr": 1.0, "save_steps": 2, "logger": {"name": "none"}},
            {"lr": 1.0, "save_steps": 9, "logger": {"name": "wandb"}},
        )
        == []
    )
    assert config_differences({"lr": 1.0}, {"lr": 1.0, "max_steps": 9}) == [("max_steps", "(absent)", 9)]


def test_a_config_saved_with_the_old_top_level_rates_is_read_in_todays_keys():
    """Run dirs written before the rates moved under method: their top-level lr / weight_decay trained."""
    old = {"lr": 0.03, "weight_decay": 3.0, "method": {"name": "ag", "lr": 1e-4, "weight_decay": 30.0}}
    new = {"lr": None, "weight_decay": None, "method": {"name": "ag", "lr": 0.03, "weight_decay": 3.0}}
    assert config_differences(old, new) == []
    changed = {**new, "method": {**new["method"], "lr": 0.001}}
    assert config_differences(old, changed) == [("method.lr", 0.03, 0.001)]
