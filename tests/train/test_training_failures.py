"""A run either ends right or stops with one message and a non-zero exit: divergence (NaN/Inf), a disk
that fills up while saving, an output dir that cannot be written, a model that is not there."""

import errno
import json
import math
from types import SimpleNamespace

import pytest
import torch

from spiel.training.engine import atomic_checkpoints as checkpoints
from spiel.training.engine.divergence import DivergenceGuard
from spiel.training.engine.failures import TrainingDiverged
from tests.helpers.runs import SMALL, load_tensors, only_run_dir, run_cli


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))

    def forward(self, x):
        return SimpleNamespace(loss=(self.w * x).sum())


def test_the_guard_stops_at_a_bad_loss_gradient_or_weight_and_names_the_step():
    toy = Toy().train()
    guard = DivergenceGuard(toy, lr=0.5)
    state = SimpleNamespace(global_step=4)
    guard.on_log(None, state, None, logs={"loss": 1.25})
    toy(torch.ones(3)).loss.backward()
    guard.on_pre_optimizer_step(None, state, None)  # finite: passes
    guard.on_optimizer_step(None, state, None)
    toy(torch.tensor([1.0, math.nan, 1.0]))
    with pytest.raises(
        TrainingDiverged,
        match=r"at step 5: the loss is nan; the last finite logged loss was "
        r"1.2500 at step 4.*Lower method.lr \(now 0.5\)",
    ):
        guard.on_pre_optimizer_step(None, state, None)
    guard = DivergenceGuard(toy, lr=0.5)
    toy.w.grad = torch.tensor([0.0, math.inf, 0.0])
    with pytest.raises(TrainingDiverged, match="at step 5: a gradient of the trained weights is not finite"):
        guard.on_pre_optimizer_step(None, state, None)
    with torch.no_grad():
        toy.w[1] = math.inf
    with pytest.raises(
        TrainingDiverged, match="at step 5: the optimizer step made trained weights non-finite"
    ):
        guard.on_optimizer_step(None, state, None)
    toy.eval()(torch.tensor([math.nan] * 3))  # evaluation forwards are not training losses
    assert guard.losses == []


class TwoPart(torch.nn.Module):
    """A trained vector and a frozen one (NaN: the guard checks only what is trained); dict outputs."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))
        self.frozen = torch.nn.Parameter(torch.full((3,), math.nan), requires_grad=False)

    def forward(self, x):
        return {"loss": (self.w * x).sum()}


def test_the_guard_checks_every_micro_batch_once_and_only_what_is_trained():
    model = TwoPart().train()
    guard = DivergenceGuard(model, lr=1e-3)
    state = SimpleNamespace(global_step=0)
    for x in ([1.0, 2.0, 3.0], [1.0, math.inf, 1.0], [1.0, 1.0, 1.0]):  # three micro-batches, the 2nd bad
        model(torch.tensor(x))
    assert len(guard.losses) == 3
    with pytest.raises(
        TrainingDiverged, match=r"at step 1: the loss is inf; no finite loss was logged before it\."
    ):
        guard.on_pre_optimizer_step(None, state, None)
    guard = DivergenceGuard(model, lr=1e-3)
    guard.on_log(None, SimpleNamespace(global_step=6), None, logs={"loss": 0.5})
    guard.on_log(None, SimpleNamespace(global_step=7), None, logs={"loss": math.nan})  # not a finite loss
    guard.on_log(None, SimpleNamespace(global_step=8), None, logs={"learning_rate": 1e-3})  # no loss
    assert guard.last_finite == (6, 0.5)
    for step in (8, 9):  # each step sees only its own micro-batches: finite, then finite again
        model(torch.ones(3)).get("loss").backward()
        guard.on_pre_optimizer_step(None, SimpleNamespace(global_step=step), None)
        assert guard.losses == []
        guard.on_optimizer_step(
            None, SimpleNamespace(global_step=step), None
        )  # the frozen NaN is not checked
    model(torch.tensor([math.nan] * 3))
    with pytest.raises(
        TrainingDiverged,
        match=r"at step 10: the loss is nan; the last finite logged loss was "
        r"0\.5000 at step 6",
    ):
        guard.on_pre_optimizer_step(None, SimpleNamespace(global_step=9), None)
    model(torch.tensor([math.nan] * 3))  # the hook is gone once the guard has stopped the run
    assert guard.losses == []


def test_a_nan_loss_is_never_logged_as_a_number():
    """transformers' logging_nan_inf_filter logs a NaN step as the mean of the steps since the last log,
    0.0 right after one: that is how a diverged run showed `loss 0.0`."""
    from hydra import compose, initialize_config_dir

    from spiel.paths import CONFIG_DIR
    from spiel.training.config.args import training_arguments
    from spiel.training.config.hydra_config import validate

    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        settings = validate(compose(config_name="train", overrides=["device=cpu"]))
    assert training_arguments(settings, "/tmp/x", "adamw_torch", False, "x").logging_nan_inf_filter is False


@pytest.mark.slow
def test_a_diverging_run_stops_at_the_step_keeps_the_last_good_checkpoint_and_writes_no_final(
    tmp_path, capsys
):
    code = run_cli(
        [
            f"output_root={tmp_path}",
            *SMALL,
            "max_steps=20",
            "method.lr=1e4",
            "method.weight_decay=0",  # lr·λ >= 1 is refused before training; this run must diverge
            "save_steps=1",
            "save_total_limit=30",
            "method.rank_equiv=2",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    message = next(
        line for line in err.splitlines() if line.startswith("spiel-train: error: training diverged")
    )
    step = int(message.split("at step ")[1].split(":")[0])
    assert 1 < step < 20 and "last finite logged loss was" in message and "Traceback" not in err
    run_dir = only_run_dir(tmp_path)
    assert not (run_dir / "final").exists() and not (run_dir / "summary.json").exists()
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == list(range(1, step))  # the diverged step is not logged
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 and math.isfinite(r["grad_norm"]) for r in logged)
    last = checkpoints.latest_checkpoint(run_dir)
    assert checkpoints.checkpoint_step(last) == step - 1
    values = load_tensors(last / "spiel_delta.safetensors")
    assert all(torch.isfinite(v).all() for k, v in values.items() if k.endswith(".values"))


def _fail_writes_into(fragment, error):
    """torch.save, failing for any path that contains ``fragment`` (as a full disk would)."""
    real = torch.save

    def save(obj, f, *args, **kwargs):
        if fragment in str(f):
            raise error
        return real(obj, f, *args, **kwargs)

    return save


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        # what torch's C++ writer raises on a full disk (no errno): the free space tells
        RuntimeError(
            "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: "
            "file write failed"
        ),
    ],
    ids=["oserror", "torch-writer"],
)
def test_disk_full_while_saving_names_the_path_and_keeps_the_previous_checkpoint(
    tmp_path, monkeypatch, capsys, error
):
    import shutil
    from collections import namedtuple

    if isinstance(error, RuntimeError):
        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 4096, 4096))
    monkeypatch.setattr(torch, "save", _fail_writes_into("checkpoint-4", error))
    code = run_cli([f"output_root={tmp_path}", *SMALL, "max_steps=6", "save_steps=2", "method.rank_equiv=2"])
    err = capsys.readouterr().err
    run_dir = only_run_dir(tmp_path)
    assert code == 2, err[-3000:]
    assert (
        f"spiel-train: error: saving checkpoint-4: cannot write {run_dir / 'checkpoint-4'}: "
        "no space left on device"
    ) in err
    assert "Traceback" not in err
    assert checkpoints.is_complete(run_dir / "checkpoint-2") and not (run_dir / "checkpoint-4").exists()
    assert checkpoints.latest_checkpoint(run_dir) == run_dir / "checkpoint-2"
    assert not (run_dir / checkpoints.STAGING).exists() and not (run_dir / "final").exists()


def test_an_output_dir_that_cannot_be_written_is_named_before_anything_runs(tmp_path, monkeypatch, capsys):
    """A read-only file system (simulated: tests run as root, for whom permission bits do not stop a
    write) fails with the path and the reason, not with Hydra's `Unable to configure handler 'file'`."""
    import tempfile

    readonly = tmp_path / "ro"
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and str(dir).startswith(str(readonly)):
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    code = run_cli([f"output_root={readonly}", *SMALL, "max_steps=1", "run_name=r"])
    err = capsys.readouterr().err
    assert code == 2
    assert (
        f"spiel-train: error: cannot write the run dir {readonly / 'r'}: read-only file system" in err
        and "output_root=" in err
    ), err
    assert not (readonly / "r" / "train.log").exists()


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["method.target_modules=[nope_proj]"], "method.target_modules: ['nope_proj'] match no linear layer"),
        (["method.target_modules=.*nothing.*"], "method.target_modules: '.*nothing.*' selects no"),
        (["method=lora", "method.target_modules=[q_proj,nope]"], "method.target_modules: ['nope'] match no"),
        (
            ["method=ia3", "method.target_modules=[nope]", "method.feedforward_modules=[]"],
            "method.target_modules",
        ),
        (["method.rank_equiv=100000"], "method (rank_equiv / density / num_tunable): the budget of"),
    ],
    ids=["spiel-list", "spiel-regex", "lora", "ia3", "budget"],
)
def test_targets_that_match_nothing_fail_before_the_weights_load(
    tmp_path, monkeypatch, capsys, overrides, message
):
    import spiel.io.base_model

    def forbidden(*args, **kwargs):
        raise AssertionError("the weights were loaded before target_modules were checked")

    monkeypatch.setattr(spiel.io.base_model, "load_base_model", forbidden)
    code = run_cli([f"output_root={tmp_path}", *SMALL, "max_steps=1", *overrides])
    err = capsys.readouterr().err
    assert code == 2 and f"spiel-train: error: {message}" in err, err[-3000:]
    assert "Traceback" not in err


def test_a_missing_model_names_the_key_what_was_looked_for_and_how_to_get_it(tmp_path, monkeypatch):
    from spiel.io.model_source import MODEL_ALIASES, check_model_source

    check_model_source("tiny")
    check_model_source(str(MODEL_ALIASES["tiny"]))
    cases = {
        str(tmp_path / "nope"): f"model.name_or_path: no model directory at {tmp_path / 'nope'}",
        "./relative/dir": "model.name_or_path: no model directory at",
        str(tmp_path): f"model.name_or_path: {tmp_path} is a directory without a config.json",
        "org/not-cached-model": "model.name_or_path: 'org/not-cached-model' is neither a local directory nor in "
        "the Hugging Face cache, and HF_HUB_OFFLINE is set",
    }
    (tmp_path / "file.bin").write_bytes(b"x")
    cases[str(tmp_path / "file.bin")] = "is a file; a model is a directory"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    for name, message in cases.items():
        with pytest.raises(ValueError) as error:
            check_model_source(name)
        assert message in str(error.value), str(error.value)
        if "HF_HUB_OFFLINE" in message or "no model directory" in message:
            assert "model=tiny|smollm2-135m|llama2-7b|llama2-13b" in str(error.value)
    monkeypatch.setitem(MODEL_ALIASES, "tiny", tmp_path / "gone")
    with pytest.raises(ValueError, match="the alias 'tiny' is the model in .*gone, which is missing"):
        check_model_source("tiny")
