"""Stop a run at the first step whose loss, gradients or updated weights are not finite.

A diverged run must never look finished: the Trainer would otherwise keep stepping on NaN weights, log
them, and save a final checkpoint full of NaN. The check is cheap: one ``isfinite`` pass over the
trainable tensors (for SpIEL the k sparse values) and the loss of each forward, with one host sync per
micro-batch and per optimizer step.

The guard raises :class:`TrainingDiverged` from inside ``Trainer.train`` *before* the optimizer step
(bad loss or gradients) or right after it (bad weights), so the step is neither logged nor saved:
no ``final/`` is written and the newest ``checkpoint-N/`` stays the last good one.

Weights can also be finite and still useless (values of 1e26 after a decay that flipped them each step):
:func:`check_final_logits` runs the trained model on one training batch before ``final/`` is written.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from spiel.training.engine.failures import TrainingDiverged


def _all_finite(tensors, device: torch.device) -> bool:
    tensors = [t for t in tensors if t is not None]
    flags = torch.ones((), dtype=torch.bool, device=device)
    if tensors:
        flags = torch.stack([torch.isfinite(t).all() for t in tensors]).all().to(device)
    if dist.is_available() and dist.is_initialized():  # every rank checks, and stops, at the same step
        flags = flags.to(torch.int32)
        dist.all_reduce(flags, op=dist.ReduceOp.MIN)
    return bool(flags)


class DivergenceGuard(TrainerCallback):
    """Registered by the run on the model it trains (a forward hook sees each micro-batch's loss)."""

    def __init__(self, model: torch.nn.Module, lr: float):
        self.model = model
        self.lr = lr
        self.losses: list[torch.Tensor] = []
        self.last_finite: tuple[int, float] | None = None  # (step, loss) of the last good logged loss
        self._hook = model.register_forward_hook(self._record_loss)

    def _record_loss(self, module, args, output) -> None:
        loss = getattr(output, "loss", None) if not isinstance(output, dict) else output.get("loss")
        if module.training and isinstance(loss, torch.Tensor):
            self.losses.append(loss.detach())

    def _trainable(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def _finite(self, tensors) -> bool:
        return _all_finite(tensors, next(self.model.parameters()).device)

    def _stop(self, step: int, what: str) -> None:
        self._hook.remove()
        last = (
            "no finite loss was logged before it"
            if self.last_finite is None
            else f"the last finite logged loss was {self.last_finite[1]:.4f} at step {self.last_finite[0]}"
        )
        raise TrainingDiverged(
            f"training diverged at step {step}: {what}; {last}. The run stops without a final checkpoint "
            f"(the newest checkpoint-N/ in the run dir, if any, is from before). Lower method.lr (now {self.lr:g}) "
            "or set max_grad_norm, then start again (or resume=auto with resume_allow_config_changes=true)."
        )

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        step = state.global_step + 1  # the step being taken
        losses, self.losses = self.losses, []
        if not self._finite(losses):
            bad = next(float(x) for x in losses if not torch.isfinite(x).all())
            self._stop(step, f"the loss is {bad}")
        if not self._finite([p.grad for p in self._trainable()]):
            self._stop(step, "a gradient of the trained weights is not finite (the loss was finite)")

    def on_optimizer_step(self, args, state, control, **kwargs):
        if not self._finite(self._trainable()):
            self._stop(state.global_step + 1, "the optimizer step made trained weights non-finite")

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if isinstance(loss, (int, float)) and math.isfinite(loss):
            self.last_finite = (state.global_step, float(loss))

    def on_train_end(self, args, state, control, **kwargs):
        self._hook.remove()


def check_final_logits(model: torch.nn.Module, batch: dict, lr: float) -> None:
    """Raise TrainingDiverged unless the trained model's logits on ``batch`` (one training micro-batch, on
    the model's device) are finite. Every rank calls it (a sharded model forwards on all of them)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    finally:
        model.train(was_training)
    if _all_finite([logits], logits.device):
        return
    trained = [p.detach() for p in model.parameters() if p.requires_grad and p.numel()]
    largest = max((float(p.abs().max()) for p in trained), default=float("nan"))
    raise TrainingDiverged(
        f"the trained model's logits on a training batch are not finite ({int((~torch.isfinite(logits)).sum())} "
        f"of {logits.numel()}; the largest trained weight is {largest:.3g}): no final checkpoint is written (the "
        f"newest checkpoint-N/ in the run dir, if any, is kept). Lower method.lr (now {lr:g}) or "
        "method.weight_decay and start again."
    )
