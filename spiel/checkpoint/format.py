"""The SpIEL checkpoint format (what spiel-eval consumes) and the checks made when loading one.

A directory with ``spiel_config.json`` (SpielConfig, per-module k and shape, base model identity,
format and package version), ``spiel_delta.safetensors`` and, when given, the tokenizer files.
The delta holds, per target module M, either the training form ``M.indices`` (flat row-major, sorted),
``M.values``, ``M.grown_at`` (what resume needs) or the compact form that inference needs:
``M.values`` and the positions Elias–Fano coded, ``M.low_bits`` and ``M.high_bits`` (uint8, see
``spiel.checkpoint.elias_fano``; format 2 stored them as CSR, ``M.row_ptr`` and ``M.col_idx``, which still
reads). Each file is written to a temporary name and renamed; the config goes last, so a directory
without it is never taken for a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from spiel.checkpoint import elias_fano
from spiel.delta.layer import SparseDeltaLinear
from spiel.delta.weights import dense_weight, is_quantized, weight_shape

FORMAT_VERSION = 3  # 3: compact positions Elias–Fano coded; 2 (compact as CSR) and 1 (flat only) still read
CONFIG_NAME = "spiel_config.json"
DELTA_NAME = "spiel_delta.safetensors"
FINGERPRINT_SIZE = 32
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
    """A delta (loaded, weighted or merged) holds values no fine-tuning of this base produces
    (spiel.delta.bounds)."""


def compact_delta(indices: torch.Tensor, values: torch.Tensor, shape) -> dict[str, torch.Tensor]:
    """``{"values", "low_bits", "high_bits"}`` of a delta with sorted flat ``indices`` over a ``shape``
    weight: the positions Elias–Fano coded (``checkpoint_check`` decodes them back)."""
    return {"values": values.detach().cpu(), **elias_fano.encode(indices, shape[0] * shape[1])}


def weight_fingerprint(module) -> list[float]:
    """``FINGERPRINT_SIZE`` evenly spaced entries of a linear layer's base weight (without any delta).

    ``module``: a plain (or 4-bit) linear layer, or a ``SparseDeltaLinear`` (its merged delta is
    subtracted back out)."""
    if isinstance(module, SparseDeltaLinear):
        module.restore_base()  # merged storage: the weight may hold W + Δ between forwards
    base = getattr(module, "base_layer", module)
    out_features, in_features = weight_shape(base.weight)
    # float64: float32 rounds positions past 2^24 (LLaMA-7B's matrices) up to one past the end
    positions = torch.linspace(0, out_features * in_features - 1, FINGERPRINT_SIZE, dtype=torch.float64).long()
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
        positions = torch.randint(flat.numel(), (BASE_SAMPLE_SIZE,), generator=torch.Generator().manual_seed(0))
        flat = flat[positions.to(flat.device)]
    sample = flat.to(torch.bfloat16).cpu().view(torch.int16).numpy().tobytes()
    return hashlib.sha256(repr(tuple(base.weight.shape)).encode() + sample).hexdigest()


def base_fingerprint(module) -> dict:
    """A module entry's base-identity fields: ``fingerprint`` and, unless 4-bit, ``base_sample_sha256``."""
    digest = base_sample_digest(module)
    return {"fingerprint": weight_fingerprint(module), **({"base_sample_sha256": digest} if digest else {})}


def base_identity(model) -> dict:
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", None) or getattr(model, "name_or_path", None)
    first = next(model.parameters(), None)
    return {"name_or_path": name or type(model).__name__, "class": type(model).__name__,
            "dtype": str(first.dtype).replace("torch.", "") if first is not None else None,
            "revision": getattr(config, "_commit_hash", None)}


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_checkpoint(directory, config: dict, tensors: dict[str, torch.Tensor], tokenizer=None) -> Path:
    from safetensors.torch import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).unlink(missing_ok=True)  # not a checkpoint until the config is back
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata={"format": "spiel"})
    _atomic_write_bytes(directory / DELTA_NAME, blob)
    config = dict(config, delta_sha256=hashlib.sha256(blob).hexdigest())  # readers refuse a damaged delta
    _atomic_write_bytes(directory / CONFIG_NAME, json.dumps(config, indent=1).encode())
    return directory


def check_against_base(directory, saved: dict, base_model, fingerprints: dict | None = None) -> None:
    """Raise CheckpointMismatchError naming what differs between the checkpoint and ``base_model``
    (module names, shapes, and the base weights themselves by a sampled fingerprint and, for full-precision
    bases, a hash of sampled entries). ``fingerprints``: the base's ``base_fingerprint`` per module, taken
    earlier (a base sharded since, e.g. by FSDP, cannot be sampled locally)."""
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
        given = {n: fingerprints[n] if fingerprints else base_fingerprint(linears[n]) for n in names}
        differ = [n for n in names if "base_sample_sha256" in modules[n] and "base_sample_sha256" in given[n]
                  and modules[n]["base_sample_sha256"] != given[n]["base_sample_sha256"]]
        if differ:
            problems.append(f"the base weights differ from those of {saved['base_model'].get('name_or_path')!r} it "
                            f"was trained on in {len(differ)} module(s), e.g. {differ[0]} (a hash of "
                            f"{BASE_SAMPLE_SIZE} sampled entries differs)")
        if names:
            a = torch.tensor([v for n in names for v in modules[n]["fingerprint"]])
            b = torch.tensor([v for n in names for v in given[n]["fingerprint"]])
            corr = float(torch.corrcoef(torch.stack([a, b]))[0, 1]) if a.std() > 0 and b.std() > 0 else 0.0
            if not corr >= FINGERPRINT_MIN_CORRELATION:
                problems.append(f"the base weights differ: the checkpoint was trained on "
                                f"{saved['base_model'].get('name_or_path')!r} and the sampled weights of the "
                                f"given model correlate {corr:.2f} with it (same base: > {FINGERPRINT_MIN_CORRELATION})")
    if problems:
        raise CheckpointMismatchError(f"checkpoint {directory} does not match the base model: " + "; ".join(problems))
