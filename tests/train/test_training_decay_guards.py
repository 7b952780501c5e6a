"""A run never finishes with a garbage delta: rate × decay is checked before anything loads (decoupled
decay with lr·λ ≥ 1 flips and grows every value), and the trained model must give finite logits on one
training batch before final/ is written."""

import re

import pytest
import torch
from hydra import compose, initialize_config_dir

from spiel.optim import SparseAdamW, SparseSM3
from spiel.paths import CONFIG_DIR
from spiel.training.config.hydra_config import ConfigError, validate
from spiel.training.engine.divergence import check_final_logits
from spiel.training.engine.failures import TrainingDiverged
from tests.helpers.runs import SMALL, only_run_dir, run_cli


def composed(*overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return compose(config_name="train", overrides=list(overrides))


@pytest.mark.parametrize("method", ["ag", "ma", "lora", "full"])
def test_lr_times_decay_at_one_is_refused_and_just_below_accepted(method):
    lr = 0.25
    with pytest.raises(
        ConfigError,
        match=re.escape("method.weight_decay: with method.lr=0.25, lr·weight_decay = 0.25·4 = 1 >= 1"),
    ):
        validate(composed(f"method={method}", f"method.lr={lr}", "method.weight_decay=4"))
    below = float(
        torch.nextafter(torch.tensor(4.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64))
    )
    assert (
        validate(composed(f"method={method}", f"method.lr={lr}", f"method.weight_decay={below!r}")).method.lr
        == lr
    )


def test_the_optimizers_refuse_it_too():
    p = torch.nn.Parameter(torch.zeros(4))
    with pytest.raises(ValueError, match=r"lr·weight_decay = .* >= 1"):
        SparseAdamW([p], lr=0.1, weight_decay=10)
    with pytest.raises(ValueError, match=r"lr·weight_decay = .* >= 1"):
        SparseSM3([p], {}, lr=0.1, weight_decay=10)


def test_the_final_probe_refuses_finite_weights_with_infinite_logits():
    from spiel import SpielConfig, get_spiel_model
    from spiel.testing import tiny_model

    model = get_spiel_model(tiny_model(), SpielConfig(rank_equiv=1)).allow_static_training()
    batch = {"input_ids": torch.tensor([[1, 40, 77, 90]]), "labels": torch.tensor([[1, 40, 77, 90]])}
    check_final_logits(model, batch, lr=0.1)  # untrained: finite
    with torch.no_grad():
        for layer in model.deltas.values():
            layer.values.fill_(4.5e26)  # finite, what weight_decay=1e30 trained to
    with pytest.raises(
        TrainingDiverged,
        match=r"logits on a training batch are not finite \(\d+ of \d+; the largest "
        r"trained weight is 4\.5e\+26\): no final checkpoint is written",
    ):
        check_final_logits(model, batch, lr=0.1)


@pytest.mark.slow
def test_a_run_trained_to_huge_values_writes_no_final(tmp_path, capsys, monkeypatch):
    """The issue's run (weight_decay=1e30) with the rate × decay check lifted: the probe stops it."""
    import spiel.optim.adamw
    import spiel.optim.slot_state

    monkeypatch.setattr(spiel.optim.slot_state, "decay_problem", lambda lr, wd: None)
    monkeypatch.setattr(spiel.optim.adamw, "decay_problem", lambda lr, wd: None)
    code = run_cli([f"output_root={tmp_path}", *SMALL, "method.weight_decay=1e30"])
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    assert "spiel-train: error: the trained model's logits on a training batch are not finite" in err
    run_dir = only_run_dir(tmp_path)
    assert not (run_dir / "final").exists() and (run_dir / "checkpoint-2").is_dir()
