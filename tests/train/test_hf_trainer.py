"""SpIEL inside transformers' Trainer and TRL's SFTTrainer (``spiel_trainer`` / ``SpielTrainerMixin``).

References: the documented plain PyTorch loop (make_optimizer + make_selector), an uninterrupted run for
resume, the full model's size for checkpoint sizes, a plain Trainer for the refusal."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

from spiel import SpielConfig, get_spiel_model, spiel_trainer
from spiel.checkpoint.format import DELTA_NAME
from spiel.integrations.selector_callback import STATE_FILE
from spiel.model.spiel_model import STATIC_TRAINING_MESSAGE, SpielModel
from spiel.testing import tiny_model, tiny_tokenizer

pytestmark = pytest.mark.slow

BATCH, SEQ, STEPS = 4, 24, 6
CONFIG = dict(method="ag", rank_equiv=2, reselection_steps=2, estimation_steps=1, seed=0)


def token_rows(n: int, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(4, 250, (n, SEQ), generator=gen).tolist()


def lm_dataset(n: int = BATCH * STEPS) -> Dataset:
    rows = token_rows(n)
    return Dataset.from_dict({"input_ids": rows, "labels": rows})


def spiel_tiny(seed: int = 0, **overrides) -> SpielModel:
    return get_spiel_model(tiny_model(), SpielConfig(**{**CONFIG, "seed": seed, **overrides}))


def args_for(out, **kw) -> TrainingArguments:
    base = dict(
        output_dir=str(out),
        per_device_train_batch_size=BATCH,
        max_steps=STEPS,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=0,
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    return TrainingArguments(**{**base, **kw})


def delta_tensors(model: SpielModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.delta_state().items()}


def test_trainer_matches_the_plain_loop_and_reselects(tmp_path):
    """One batch = the whole dataset per step, so the Trainer's shuffling cannot change the loss: the
    Trainer run must equal a plain PyTorch loop (the README's) step for step."""
    data = lm_dataset(BATCH)
    model = spiel_tiny()
    start = delta_tensors(model)
    trainer = spiel_trainer(Trainer)(model=model, args=args_for(tmp_path / "run"), train_dataset=data)
    trainer.train()

    ref = spiel_tiny()
    ref.train()
    optimizer = ref.make_optimizer(lr=1e-2)
    selector = ref.make_selector(optimizer, total_steps=STEPS)
    batch = torch.tensor(data["input_ids"])
    for _ in range(STEPS):
        ref(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        selector.step()

    got, want = delta_tensors(model), delta_tensors(ref)
    changed = [k for k in got if k.endswith(".indices") and not torch.equal(got[k], start[k])]
    assert changed, "no reselection happened"
    for key in got:
        if key.endswith(".values"):
            torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-6, msg=key)
        else:
            assert torch.equal(got[key], want[key]), key


class StopAfter(TrainerCallback):
    """Dies in the middle of training, as a killed job would (after a checkpoint was written)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("killed")


def optimizer_state(trainer) -> list[torch.Tensor]:
    opt = trainer.optimizer
    opt = getattr(opt, "optimizer", opt)
    return [t for p in opt.param_groups[0]["params"] for t in opt.state[p].values() if torch.is_tensor(t)]


def make_trainer(trainer_cls, model, out, data, **kw):
    args = args_for(out, save_strategy="steps", save_steps=3, **kw)
    if trainer_cls == "sft":
        from trl import SFTTrainer

        return spiel_trainer(SFTTrainer)(
            model=model, args=args, train_dataset=data, processing_class=tiny_tokenizer()
        )
    return spiel_trainer(Trainer)(model=model, args=args, train_dataset=data)


@pytest.mark.parametrize("trainer_cls", ["trainer", "sft"])
def test_killed_and_resumed_ends_bit_identical(tmp_path, trainer_cls):
    data = lm_dataset()
    full = make_trainer(trainer_cls, spiel_tiny(), tmp_path / "full", data)
    full.train()
    want, want_opt = delta_tensors(full.spiel_model()), optimizer_state(full)

    killed = make_trainer(trainer_cls, spiel_tiny(), tmp_path / "killed", data)
    killed.add_callback(StopAfter(4))
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    checkpoint = tmp_path / "killed" / "checkpoint-3"
    assert (checkpoint / STATE_FILE).is_file() and (checkpoint / DELTA_NAME).is_file()

    # A fresh process: another random initial delta, which resuming must replace.
    resumed = make_trainer(trainer_cls, spiel_tiny(seed=5), tmp_path / "killed", data)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    got, got_opt = delta_tensors(resumed.spiel_model()), optimizer_state(resumed)
    assert resumed.state.global_step == STEPS
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want), [
        k for k in want if not torch.equal(got[k], want[k])
    ]
    assert len(got_opt) == len(want_opt) and all(
        torch.equal(a, b) for a, b in zip(got_opt, want_opt, strict=True)
    )
    start = delta_tensors(spiel_tiny())
    assert any(not torch.equal(want[k], start[k]) for k in want if k.endswith(".indices")), "no reselection"


def test_resume_from_a_checkpoint_without_selector_state_fails_clearly(tmp_path):
    data = lm_dataset()
    trainer = make_trainer("trainer", spiel_tiny(), tmp_path / "run", data, max_steps=3)
    trainer.train()
    (tmp_path / "run" / "checkpoint-3" / STATE_FILE).unlink()
    again = make_trainer("trainer", spiel_tiny(), tmp_path / "run", data)
    with pytest.raises(FileNotFoundError, match=f"no {STATE_FILE}: not a checkpoint of SpIEL training"):
        again.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-3"))


def dir_size(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_checkpoints_hold_the_delta_not_the_model(tmp_path):
    model = spiel_tiny(rank_equiv=4)
    trainer = make_trainer("trainer", model, tmp_path / "run", lm_dataset(), max_steps=3)
    trainer.train()
    checkpoint = tmp_path / "run" / "checkpoint-3"
    model.save_pretrained(tmp_path / "delta", compact=False)  # the form checkpoint-N/ holds
    full_model = sum(p.numel() * p.element_size() for p in tiny_model().parameters())
    delta, ckpt = dir_size(tmp_path / "delta"), dir_size(checkpoint)
    optimizer = (checkpoint / "optimizer.pt").stat().st_size
    assert not list(checkpoint.glob("model*.safetensors")) and not (checkpoint / "pytorch_model.bin").exists()
    # The checkpoint is the delta, Adam's state for it (two fp32 moments per entry; the ages are derived
    # from grown_at) and a few small files; never the frozen base.
    assert optimizer <= 1.05 * delta
    assert ckpt <= delta + optimizer + 64 * 1024
    assert ckpt <= 2 * delta
    assert ckpt < full_model / 4
    print(
        f"full model {full_model:,} B; delta {delta:,} B; checkpoint {ckpt:,} B "
        f"({ckpt / delta:.2f}x the delta; optimizer.pt {optimizer:,} B)"
    )


def test_nf4_base_trains_with_no_flags(tmp_path):
    from spiel.io.base_model import load_base_model

    base = load_base_model("tiny", quant="nf4", dtype="bfloat16", device="cpu")
    model = get_spiel_model(base, SpielConfig(**{**CONFIG, "delta_dtype": "bfloat16"}))
    start = delta_tensors(model)
    trainer = spiel_trainer(Trainer)(
        model=model, args=args_for(tmp_path / "run", max_steps=4), train_dataset=lm_dataset(BATCH)
    )
    trainer.train()
    got = delta_tensors(model)
    assert any(not torch.equal(got[k], start[k]) for k in got if k.endswith(".indices"))
    assert all(torch.isfinite(v).all() for k, v in got.items() if k.endswith(".values"))
    assert any(v.abs().sum() > 0 for k, v in got.items() if k.endswith(".values"))


@pytest.mark.parametrize("optim", ["default", "spiel_optimizer"])
def test_plain_trainer_refuses_to_train_static(tmp_path, optim):
    model = spiel_tiny()
    kwargs = {"optimizers": (model.make_optimizer(lr=1e-2), None)} if optim == "spiel_optimizer" else {}
    trainer = Trainer(model=model, args=args_for(tmp_path / "run"), train_dataset=lm_dataset(BATCH), **kwargs)
    before = delta_tensors(model)
    with pytest.raises(RuntimeError) as err:
        trainer.train()
    assert str(err.value) == STATIC_TRAINING_MESSAGE and "spiel_trainer(Trainer)" in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in delta_tensors(model).items())


def test_wrong_optimizer_is_refused_at_construction(tmp_path):
    model = spiel_tiny()
    adamw = torch.optim.AdamW([layer.values for layer in model.deltas.values()], lr=1e-3)
    with pytest.raises(TypeError, match="needs spiel's SparseAdamW, got AdamW"):
        spiel_trainer(Trainer)(
            model=model,
            args=args_for(tmp_path / "run"),
            train_dataset=lm_dataset(BATCH),
            optimizers=(adamw, None),
        )
    with pytest.raises(TypeError, match="optimizer_cls_and_kwargs cannot be used with a SpielModel"):
        spiel_trainer(Trainer)(
            model=model,
            args=args_for(tmp_path / "run"),
            train_dataset=lm_dataset(BATCH),
            optimizer_cls_and_kwargs=(torch.optim.AdamW, {"lr": 1e-3}),
        )


def test_other_models_pass_through_and_static_on_purpose_trains(tmp_path):
    plain = tiny_model()
    trainer = spiel_trainer(Trainer)(
        model=plain, args=args_for(tmp_path / "plain", max_steps=1), train_dataset=lm_dataset(BATCH)
    )
    assert trainer._selector_callback is None
    model = spiel_tiny().allow_static_training()
    start = delta_tensors(model)
    Trainer(
        model=model,
        args=args_for(tmp_path / "static", max_steps=2),
        train_dataset=lm_dataset(BATCH),
        optimizers=(model.make_optimizer(lr=1e-2), None),
    ).train()
    got = delta_tensors(model)
    assert all(torch.equal(got[k], start[k]) for k in got if k.endswith(".indices"))
    assert any(not torch.equal(got[k], start[k]) for k in got if k.endswith(".values"))


def test_only_training_mode_with_gradients_is_refused():
    model = spiel_tiny()  # wraps a model in eval mode: starts in eval mode too
    ids = torch.tensor(token_rows(1))
    assert not model.training
    model(input_ids=ids, labels=ids).loss.backward()  # e.g. a gradient probe, not training
    model.train()
    with torch.no_grad():
        model(input_ids=ids)
    with pytest.raises(RuntimeError, match="without a selector"):
        model(input_ids=ids)
    selector = model.make_selector(model.make_optimizer(lr=1e-3), total_steps=2)
    model(input_ids=ids)
    del selector  # a dropped selector no longer reselects: refused again
    with pytest.raises(RuntimeError, match="without a selector"):
        model(input_ids=ids)


def dense_mean_loss(rows: list[list[int]]) -> float:
    """Plain PyTorch: the tiny model's next-token cross-entropy, averaged over every label token."""
    model = tiny_model()
    ids = torch.tensor(rows)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1)
    ).item()


def test_evaluate_returns_eval_loss_of_the_wrapped_model(tmp_path):
    """Without the label columns of the wrapped model, evaluate() returned only runtime keys."""
    data = lm_dataset(BATCH)
    trainer = spiel_trainer(Trainer)(
        model=spiel_tiny(),
        args=args_for(tmp_path / "run", per_device_eval_batch_size=BATCH),
        train_dataset=data,
        eval_dataset=data,
    )
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] == pytest.approx(
        dense_mean_loss(data["input_ids"]), rel=1e-5
    )  # deltas start at 0


def test_load_best_model_at_end_by_eval_loss(tmp_path):
    data = lm_dataset(BATCH * 2)
    args = args_for(
        tmp_path / "run",
        max_steps=4,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
    )
    trainer = spiel_trainer(Trainer)(model=spiel_tiny(), args=args, train_dataset=data, eval_dataset=data)
    trainer.train()
    evals = [r["eval_loss"] for r in trainer.state.log_history if "eval_loss" in r]
    assert len(evals) == 2 and trainer.state.best_metric == min(evals)
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{2 + 2 * evals.index(min(evals))}")
    assert trainer.evaluate()["eval_loss"] == pytest.approx(min(evals), rel=1e-5)  # the best delta is back
