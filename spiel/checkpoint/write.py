"""Writing a SpIEL checkpoint: the header built from the model's parts, the delta tensors in either form, each
file written to a temporary name and renamed, the header last (with the delta's SHA-256)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from spiel.checkpoint.codec import compact_delta
from spiel.checkpoint.fingerprint import base_identity
from spiel.checkpoint.format import CONFIG_NAME, DELTA_NAME, CheckpointHeader, ModuleEntry


def checkpoint_header(spiel_config, base_model, deltas: dict, fingerprints: dict) -> CheckpointHeader:
    """The header of a delta: ``spiel_config`` (a SpielConfig), the ``base_model`` it was trained on, per
    module (``deltas``: name -> SparseDeltaLinear) its k, shape and base-weight fingerprint (``fingerprints``:
    name -> ``fingerprint.base_fingerprint``)."""
    from spiel import __version__

    return CheckpointHeader(
        spiel_version=__version__,
        spiel_config=spiel_config.to_dict(),
        base_model=base_identity(base_model),
        modules={
            n: ModuleEntry(layer.k, [layer.out_features, layer.in_features], **fingerprints[n])
            for n, layer in deltas.items()
        },
    )


def delta_tensors(deltas: dict, compact: bool) -> dict[str, torch.Tensor]:
    """``compact``: what inference needs (values, positions Elias–Fano coded); else the training form resume
    needs (flat sorted indices, values, grown_at)."""
    if not compact:
        return {
            f"{n}.{key}": getattr(layer, key)
            for n, layer in deltas.items()
            for key in ("indices", "values", "grown_at")
        }
    return {
        f"{n}.{key}": t
        for n, layer in deltas.items()
        for key, t in compact_delta(
            layer.indices, layer.values, (layer.out_features, layer.in_features)
        ).items()
    }


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_checkpoint(
    directory, header: CheckpointHeader | dict, tensors: dict[str, torch.Tensor], tokenizer=None
) -> Path:
    from safetensors.torch import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).unlink(missing_ok=True)  # not a checkpoint until the config is back
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata={"format": "spiel"})
    _atomic_write_bytes(directory / DELTA_NAME, blob)
    config = header.to_dict() if isinstance(header, CheckpointHeader) else dict(header)
    config["delta_sha256"] = hashlib.sha256(blob).hexdigest()  # readers refuse a damaged delta
    _atomic_write_bytes(directory / CONFIG_NAME, json.dumps(config, indent=1).encode())
    return directory
