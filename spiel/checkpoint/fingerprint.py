"""Which base a delta belongs to: a sampled fingerprint of each base weight, the base's identity, and the
check made when a checkpoint is loaded onto a base."""

from __future__ import annotations

import torch

from spiel.checkpoint.format import FINGERPRINT_SIZE
from spiel.delta.layer import SparseDeltaLinear
from spiel.delta.weights import dense_weight, weight_shape

# Same base: the sampled weights correlate ~1 (≥ 0.99 even through NF4 quantization); another model
# of the same architecture: ~0.
FINGERPRINT_MIN_CORRELATION = 0.9


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the base model it is being loaded into."""


def weight_fingerprint(module) -> list[float]:
    """``FINGERPRINT_SIZE`` evenly spaced entries of a linear layer's base weight (without any delta).

    ``module``: a plain (or 4-bit) linear layer, or a ``SparseDeltaLinear`` (its merged delta is
    subtracted back out)."""
    if isinstance(module, SparseDeltaLinear):
        module.restore_base()  # merged storage: the weight may hold W + Δ between forwards
    base = getattr(module, "base_layer", module)
    out_features, in_features = weight_shape(base.weight)
    positions = torch.linspace(0, out_features * in_features - 1, FINGERPRINT_SIZE).long()
    weight, _ = dense_weight(base.weight, torch.float32)
    sample = weight.reshape(-1)[positions.to(weight.device)].detach().clone().cpu()
    if getattr(module, "merged", False):
        indices = module.indices.long().cpu()
        hit = torch.isin(positions, indices)
        sample[hit] -= module.values.detach().float().cpu()[torch.searchsorted(indices, positions[hit])]
    return [round(float(v), 7) for v in sample]


def base_identity(model) -> dict:
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", None) or getattr(model, "name_or_path", None)
    first = next(model.parameters(), None)
    return {"name_or_path": name or type(model).__name__, "class": type(model).__name__,
            "dtype": str(first.dtype).replace("torch.", "") if first is not None else None,
            "revision": getattr(config, "_commit_hash", None)}


def check_against_base(directory, saved: dict, base_model, fingerprints: dict | None = None) -> None:
    """Raise CheckpointMismatchError naming what differs between the checkpoint and ``base_model``
    (module names, shapes, and the base weights themselves by a sampled fingerprint). ``fingerprints``:
    the base's, taken earlier (a base sharded since, e.g. by FSDP, cannot be sampled locally)."""
    linears = {n: m for n, m in base_model.named_modules()
               if isinstance(m, (torch.nn.Linear, SparseDeltaLinear))}  # a wrapped model too (resume)
    base_shapes = {n: weight_shape(m.weight) for n, m in linears.items()}
    problems = []
    modules = saved["modules"]
    missing = [n for n in modules if n not in base_shapes]
    if missing:
        problems.append(f"{len(missing)} module(s) of the checkpoint are not linear layers of the base model, "
                        f"e.g. {missing[:3]}")
    wrong = [f"{n}: checkpoint {modules[n]['shape']}, base {list(base_shapes[n])}"
             for n in modules if n in base_shapes and list(base_shapes[n]) != list(modules[n]["shape"])]
    if wrong:
        problems.append("shape mismatch for " + "; ".join(wrong[:3]) + (" ..." if len(wrong) > 3 else ""))
    if not problems:
        names = [n for n in modules if "fingerprint" in modules[n]]
        if names:
            a = torch.tensor([v for n in names for v in modules[n]["fingerprint"]])
            b = torch.tensor([v for n in names
                              for v in (fingerprints[n] if fingerprints else weight_fingerprint(linears[n]))])
            corr = float(torch.corrcoef(torch.stack([a, b]))[0, 1]) if a.std() > 0 and b.std() > 0 else 0.0
            if not corr >= FINGERPRINT_MIN_CORRELATION:
                problems.append(f"the base weights differ: the checkpoint was trained on "
                                f"{saved['base_model'].get('name_or_path')!r} and the sampled weights of the "
                                f"given model correlate {corr:.2f} with it (same base: > {FINGERPRINT_MIN_CORRELATION})")
    if problems:
        raise CheckpointMismatchError(f"checkpoint {directory} does not match the base model: " + "; ".join(problems))
