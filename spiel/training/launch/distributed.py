"""Process-group helpers for spiel-train (DDP through torchrun / accelerate launch)."""

from __future__ import annotations

import hashlib
import os

import torch
import torch.distributed as dist


def env_world_size() -> int:
    """The launcher's world size (torchrun / accelerate set WORLD_SIZE), known before any init."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj) -> list:
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def trainable_digest(model) -> str:
    """A hash of everything trained (SpIEL indices and values, or the trainable parameters)."""
    h = hashlib.sha256()
    deltas = getattr(model, "deltas", None)
    if isinstance(deltas, dict) and deltas:
        tensors = [t for name in sorted(deltas) for t in (deltas[name].indices, deltas[name].values)]
    else:
        tensors = [p for _, p in sorted(model.named_parameters()) if p.requires_grad]
    for t in tensors:
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
