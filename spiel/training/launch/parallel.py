"""``parallel=fsdp``: the frozen base sharded with FSDP2, the SpIEL deltas replicated.

Each decoder layer (and then the root, for embeddings, final norm and head) gets ``fully_shard`` with the
layer's delta values as ``ignored_params``: FSDP2 shards and gathers only the frozen base weights, while
every delta's indices (buffers) and values stay whole and identical on all ranks, as under DDP. The
Trainer must not wrap the sharded model in DDP (``SpielTrainer.parallel_wrapper``); instead
``average_delta_grads`` averages the deltas' gradients over the ranks once per optimizer step, as DDP does
(divide by the world size, then sum). The selector's agreement check (indices equal on all ranks after
every reselection) stays on.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks (``model.model.layers`` in LLaMA-style models): FSDP's sharding unit."""
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0:
            return list(module)
    raise ValueError(f"{type(model).__name__} has no list of decoder layers")


class ParallelError(RuntimeError):
    """This installation cannot run parallel=fsdp."""


def check_fsdp_support() -> None:
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        raise ParallelError(
            "parallel=fsdp needs torch.distributed.fsdp.fully_shard (FSDP2, torch >= 2.6); "
            f"this is torch {torch.__version__}"
        ) from None


def shard_frozen_base(spiel_model) -> None:
    """``fully_shard`` each decoder layer and the root, leaving the deltas' values replicated."""
    from torch.distributed.fsdp import fully_shard

    # The checkpoint's base-weight fingerprint is read from whole weights: take it before they are sharded.
    spiel_model.freeze_fingerprints()
    for layer in spiel_model.deltas.values():
        # FSDP gathers the weights afresh from the shards for every forward and frees them after: the delta
        # must be applied within each call, not kept in the weight.
        layer.restore_base()
        layer.merged_storage = False
    values = {layer.values for layer in spiel_model.deltas.values()}
    inner = spiel_model.model
    for block in decoder_layers(inner):
        fully_shard(block, ignored_params={p for p in block.parameters() if p in values})
    fully_shard(inner, ignored_params=values)


class ShardedModel(nn.Module):
    """What the Trainer runs forward on under parallel=fsdp: the model itself, under another object, so the
    Trainer's ``model_wrapped is model`` test does not send it to accelerate's DDP wrap."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def average_delta_grads(trainer, spiel_model) -> None:
    """At the last micro-batch of each optimizer step (before the Trainer logs or clips the gradient norm),
    every delta's gradient becomes the mean over the ranks, computed as DDP computes it: each rank divides
    by the world size, then the ranks sum."""
    world = dist.get_world_size()

    def average(param: torch.Tensor) -> None:
        if trainer.accelerator.sync_gradients:
            param.grad.div_(world)
            dist.all_reduce(param.grad)

    for layer in spiel_model.deltas.values():
        layer.values.register_post_accumulate_grad_hook(average)


def attach(trainer, spiel_model) -> None:
    trainer.parallel_wrapper = ShardedModel(spiel_model)
    average_delta_grads(trainer, spiel_model)
