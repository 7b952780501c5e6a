"""Which base a delta belongs to: a sampled fingerprint of each base weight (and a hash of sampled entries),
the base's identity, and the check made when a checkpoint is loaded onto a base."""

from __future__ import annotations

import hashlib

import torch

from spiel.checkpoint.format import FINGERPRINT_SIZE
from spiel.delta.layer import SparseDeltaLinear
from spiel.delta.weights import dense_weight, is_quantized, weight_shape

# Same base: the sampled weights correlate ~1 (≥ 0.99 even through NF4 quantization); another model
# of the same architecture: ~0.
FINGERPRINT_MIN_CORRELATION = 0.9
# ... and a SHA-256 of this many entries per matrix (drawn with a fixed seed; a smaller matrix: all of them),
# rounded to bfloat16 so that the same base in float32 or bfloat16 agrees. A base differing in 1% of one
# matrix's entries escapes it with probability 0.99^2048 ≈ 1e-9. 4-bit and float16 bases are not hashed
# (quantization changes every entry; float16 rounds float32 values differently from bfloat16): the
# correlation above is their check.
BASE_SAMPLE_SIZE = 2048


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the base model it is being loaded into."""


class DeltaValueError(CheckpointMismatchError):
    """A delta (loaded, or a weighted sum) holds values no fine-tuning of this base produces
    (spiel.delta.bounds)."""


def weight_fingerprint(module) -> list[float]:
    """``FINGERPRINT_SIZE`` evenly spaced entries of a linear layer's base weight (without any delta).

    ``module``: a plain (or 4-bit) linear layer, or a ``SparseDeltaLinear`` (its merged delta is
    subtracted back out)."""
    if isinstance(module, SparseDeltaLinear):
        module.restore_base()  # merged storage: the weight may hold W + Δ between forwards
    base = getattr(module, "base_layer", module)
    out_features, in_features = weight_shape(base.weight)
    # float64: float32 rounds positions past 2^24 (LLaMA-7B's matrices) up to one past the end
    positions = torch.linspace(
        0, out_features * in_features - 1, FINGERPRINT_SIZE, dtype=torch.float64
    ).long()
    # gather, then convert (a whole-matrix float32 copy took ~0.3 s per LLaMA-7B matrix); 4-bit: dequantize
    weight = dense_weight(base.weight, torch.float32)[0] if is_quantized(base.weight) else base.weight
    sample = weight.detach().reshape(-1)[positions.to(weight.device)].float().cpu()
    if getattr(module, "merged", False):
        indices = module.indices.long().cpu()
        hit = torch.isin(positions, indices)
        sample[hit] -= module.values.detach().float().cpu()[torch.searchsorted(indices, positions[hit])]
    return [round(float(v), 7) for v in sample]


def base_sample_digest(module) -> str | None:
    """The SHA-256 of ``BASE_SAMPLE_SIZE`` seeded entries of a linear layer's base weight, in bfloat16; None
    for a 4-bit, float16 or merged one."""
    if isinstance(module, SparseDeltaLinear):
        module.restore_base()
    base = getattr(module, "base_layer", module)
    if base.weight.dtype not in (torch.float32, torch.bfloat16) or getattr(module, "merged", False):
        return None
    flat = base.weight.detach().reshape(-1)
    if flat.numel() > BASE_SAMPLE_SIZE:
        positions = torch.randint(
            flat.numel(), (BASE_SAMPLE_SIZE,), generator=torch.Generator().manual_seed(0)
        )
        flat = flat[positions.to(flat.device)]
    sample = flat.to(torch.bfloat16).cpu().view(torch.int16).numpy().tobytes()
    return hashlib.sha256(repr(tuple(base.weight.shape)).encode() + sample).hexdigest()


def base_fingerprint(module) -> dict:
    """A module entry's base-identity fields: ``fingerprint`` and, unless 4-bit, ``base_sample_sha256``."""
    return {"fingerprint": weight_fingerprint(module), "base_sample_sha256": base_sample_digest(module)}


def base_identity(model) -> dict:
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", None) or getattr(model, "name_or_path", None)
    first = next(model.parameters(), None)
    return {
        "name_or_path": name or type(model).__name__,
        "class": type(model).__name__,
        "dtype": str(first.dtype).replace("torch.", "") if first is not None else None,
        "revision": getattr(config, "_commit_hash", None),
    }


def check_against_base(directory, saved: dict, base_model, fingerprints: dict | None = None) -> None:
    """Raise CheckpointMismatchError naming what differs between the checkpoint and ``base_model``
    (module names, shapes, and the base weights themselves by a sampled fingerprint and, for full-precision
    bases, a hash of sampled entries). ``fingerprints``: the base's ``base_fingerprint`` per module, taken
    earlier (a base sharded since, e.g. by FSDP, cannot be sampled locally)."""
    linears = {
        n: m for n, m in base_model.named_modules() if isinstance(m, (torch.nn.Linear, SparseDeltaLinear))
    }  # a wrapped model too (resume)
    base_shapes = {n: weight_shape(m.weight) for n, m in linears.items()}
    problems = []
    modules = saved["modules"]
    missing = [n for n in modules if n not in base_shapes]
    if missing:
        problems.append(
            f"{len(missing)} module(s) of the checkpoint are not linear layers of the base model, "
            f"e.g. {missing[:3]}"
        )
    wrong = [
        f"{n}: checkpoint {modules[n]['shape']}, base {list(base_shapes[n])}"
        for n in modules
        if n in base_shapes and list(base_shapes[n]) != list(modules[n]["shape"])
    ]
    if wrong:
        problems.append("shape mismatch for " + "; ".join(wrong[:3]) + (" ..." if len(wrong) > 3 else ""))
    if not problems:
        names = [n for n in modules if "fingerprint" in modules[n]]
        given = {n: fingerprints[n] if fingerprints else base_fingerprint(linears[n]) for n in names}
        differ = [
            n
            for n in names
            if modules[n].get("base_sample_sha256")
            and given[n]["base_sample_sha256"]
            and modules[n]["base_sample_sha256"] != given[n]["base_sample_sha256"]
        ]
        if differ:
            problems.append(
                f"the base weights differ from those of {saved['base_model'].get('name_or_path')!r} it "
                f"was trained on in {len(differ)} module(s), e.g. {differ[0]} (a hash of "
                f"{BASE_SAMPLE_SIZE} sampled entries differs)"
            )
        if names:
            a = torch.tensor([v for n in names for v in modules[n]["fingerprint"]])
            b = torch.tensor([v for n in names for v in given[n]["fingerprint"]])
            corr = float(torch.corrcoef(torch.stack([a, b]))[0, 1]) if a.std() > 0 and b.std() > 0 else 0.0
            if not corr >= FINGERPRINT_MIN_CORRELATION:
                problems.append(
                    f"the base weights differ: the checkpoint was trained on "
                    f"{saved['base_model'].get('name_or_path')!r} and the sampled weights of the "
                    f"given model correlate {corr:.2f} with it (same base: > {FINGERPRINT_MIN_CORRELATION})"
                )
    if problems:
        raise CheckpointMismatchError(
            f"checkpoint {directory} does not match the base model: " + "; ".join(problems)
        )
