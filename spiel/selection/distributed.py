"""Keeping SpIEL's decisions identical on every rank of a data-parallel run.

Growth candidates come from rank-local gradients, so without care each rank would grow different
indices and the replicas would drift apart. SpIEL-AG therefore chooses its candidates from the global
gradient (:func:`global_mean`: the phase's first dense gradient, averaged over ranks, the gradient one
process would see with the whole batch), averages the candidate statistics over ranks the same way, and
the selector checks after every reselection that all ranks hold rank 0's indices. So 2 ranks × batch b
make the decisions 1 process × batch 2b makes, at the same steps (up to float rounding of the sums).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size(group=None) -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(group)
    return 1


def broadcast_from_rank0(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """Rank 0's ``tensor`` on every rank (same shape and dtype on all ranks)."""
    if world_size(group) > 1:
        dist.broadcast(tensor, src=dist.get_global_rank(group, 0) if group is not None else 0, group=group)
    return tensor


def all_reduce_mean_(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """In place: the mean of ``tensor`` over ranks."""
    n = world_size(group)
    if n > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
        tensor.div_(n)
    return tensor


def global_mean(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """The mean of ``tensor`` over ranks as a new float32 tensor (``tensor`` itself is left alone); every
    rank gets the same bits. Costs one all-reduce of ``tensor``'s size."""
    return all_reduce_mean_(tensor.to(torch.float32, copy=True), group)


def global_block_grad(block_grad, group=None):
    """A streamed gradient's ``block_grad(r0, r1)`` (its rows ``r0:r1``) averaged over ranks block by block: every
    rank asks for the same blocks in the same order (the shapes are the same), so each is one all-reduce."""
    return lambda r0, r1: global_mean(block_grad(r0, r1), group)


def check_same_on_all_ranks(tensor: torch.Tensor, what: str, group=None) -> None:
    """Raise if this rank's ``tensor`` differs from rank 0's."""
    if world_size(group) == 1:
        return
    reference = broadcast_from_rank0(tensor.clone(), group)
    if not torch.equal(reference, tensor):
        raise RuntimeError(
            f"SpIEL ranks disagree on {what} (rank {dist.get_rank()} differs from rank 0): the replicas "
            "would diverge. Are all ranks running the same seed and data-parallel gradients?"
        )
