"""Reading a SpIEL checkpoint back, refusing anything damaged or malformed.

Every reader (``SpielModel.from_pretrained``, ``compose``, spiel-eval, resume) goes through
:func:`read_checkpoint`, which raises :class:`InvalidCheckpointError` with one message naming the file and
the problem, before any model is touched: the header as ``format.CheckpointHeader.check`` describes it (a
base-weight ``fingerprint`` per module is required: without it the checkpoint could be loaded onto any base
of the same shape; ``allow_unverified_base`` lifts that, and the message names the override); the delta file
against the header's SHA-256 (so a truncated file or one flipped bit is caught even where it would still
parse); then each module's tensors in one of ``codec``'s forms (a compact form checked and decoded there), of
shape ``[k]``, indices integer, sorted, unique and inside the weight, values floating point, stored in the
header's ``delta_dtype`` or a dtype it widens into losslessly, and, after the cast to ``delta_dtype``, finite
and within ``spiel.delta.bounds``. A header without ``delta_sha256`` is refused unless
``allow_unverified_delta`` (named in the message).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from spiel.checkpoint.codec import (
    COMPACT_FIELDS,
    ELIAS_FANO_FIELDS,
    FLAT_FIELDS,
    OPTIONAL_FIELDS,
    decode_module,
)
from spiel.checkpoint.format import CONFIG_NAME, DELTA_NAME, CheckpointHeader, InvalidCheckpointError
from spiel.checkpoint.kind import DESCRIPTIONS, detect_kind
from spiel.delta.bounds import delta_value_problem, lossless_into
from spiel.json_text import JSONTextError, parse_json

__all__ = ["InvalidCheckpointError", "read_checkpoint", "read_spiel_config", "sha256_hex"]

UNVERIFIED_BASE_OVERRIDE = "allow_unverified_base=True"
UNVERIFIED_DELTA_OVERRIDE = "allow_unverified_delta=True"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _not_a_checkpoint(directory: Path, missing: str) -> FileNotFoundError:
    kind = detect_kind(directory)
    hint = f" (it looks like {DESCRIPTIONS[kind]})" if kind in ("peft", "full") else ""
    return FileNotFoundError(f"{directory} is not a complete SpIEL checkpoint: no {missing}{hint}")


def read_spiel_config(directory) -> dict:
    """``spiel_config.json`` of ``directory``, checked for shape (not against any model)."""
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise _not_a_checkpoint(directory, CONFIG_NAME)

    def bad(problem: str) -> InvalidCheckpointError:
        return InvalidCheckpointError(f"{path}: {problem}")

    try:
        config = parse_json(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise bad(f"not UTF-8 text ({e})") from None
    except JSONTextError as e:
        raise bad(str(e)) from None
    CheckpointHeader.check(config, bad)
    return config


def read_checkpoint(
    directory,
    *,
    allow_unverified_base: bool = False,
    override: str | None = UNVERIFIED_BASE_OVERRIDE,
    allow_unverified_delta: bool = False,
    delta_override: str | None = UNVERIFIED_DELTA_OVERRIDE,
) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """(config, {module: {"indices", "values"[, "grown_at"]}}) of a checkpoint that passed every check;
    the values in the checkpoint's ``delta_dtype``.

    ``override`` / ``delta_override``: how the caller's user lifts the fingerprint / ``delta_sha256``
    requirement (named in the message), or None where there is no such choice (resume: spiel always
    writes both)."""
    from safetensors.torch import load

    directory = Path(directory)
    config = read_spiel_config(directory)
    modules = config["modules"]
    unverified = [n for n, m in modules.items() if "fingerprint" not in m]
    if unverified and not allow_unverified_base:
        how = (
            f"if you are sure the base model is the one it was trained on, pass {override}"
            if override
            else "spiel writes them into every checkpoint, so this one was altered"
        )
        raise InvalidCheckpointError(
            f"{directory / CONFIG_NAME}: no base-weight fingerprint for {len(unverified)} of {len(modules)} "
            f"module(s) (e.g. {unverified[0]}), so it cannot be checked against the base model it is loaded "
            f"into; {how}"
        )

    path = directory / DELTA_NAME
    if not path.is_file():
        raise _not_a_checkpoint(directory, DELTA_NAME)

    def bad(problem: str) -> InvalidCheckpointError:
        return InvalidCheckpointError(f"{path}: {problem}")

    if "delta_sha256" not in config and not allow_unverified_delta:
        how = (
            f"if you trust the file as it is, pass {delta_override}"
            if delta_override
            else "spiel writes it into every checkpoint, so this one was altered"
        )
        raise InvalidCheckpointError(
            f"{directory / CONFIG_NAME}: no delta_sha256, so {DELTA_NAME} cannot be checked for damage (a "
            f"flipped bit or a truncation); {how}"
        )
    data = path.read_bytes()
    if "delta_sha256" in config and sha256_hex(data) != config["delta_sha256"]:
        raise bad(
            f"the file is damaged (truncated or altered): its SHA-256 differs from the one recorded in "
            f"{CONFIG_NAME} ({len(data):,} bytes)"
        )
    try:
        flat = load(data)
    except Exception as e:  # safetensors raises its own error type (and others) on a damaged file
        raise bad(f"not a readable safetensors file ({type(e).__name__}: {e})") from None

    delta_dtype = getattr(torch, config["spiel_config"].get("delta_dtype") or "float32")
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in flat.items():
        name, _, field = key.rpartition(".")
        if (
            name not in modules
            or field not in FLAT_FIELDS + OPTIONAL_FIELDS + COMPACT_FIELDS + ELIAS_FANO_FIELDS
        ):
            raise bad(f"unexpected tensor {key!r} (spiel_config.json lists no such module or field)")
        tensors.setdefault(name, {})[field] = tensor
    for name, entry in modules.items():
        k = entry["k"]
        numel = entry["shape"][0] * entry["shape"][1]
        fields = tensors[name] = decode_module(name, entry, tensors.get(name, {}), bad)
        for field in FLAT_FIELDS:
            if field not in fields:
                raise bad(f"missing tensor '{name}.{field}'")
        for field, t in fields.items():
            if tuple(t.shape) != (k,):
                raise bad(f"'{name}.{field}' has shape {list(t.shape)}, expected [{k}] (k of {name})")
        indices, values = fields["indices"], fields["values"]
        for field in ("indices", *OPTIONAL_FIELDS):
            if field in fields and (
                fields[field].is_floating_point()
                or fields[field].is_complex()
                or fields[field].dtype == torch.bool
            ):
                raise bad(f"'{name}.{field}' must hold integers, got {fields[field].dtype}")
        if not values.is_floating_point():
            raise bad(f"'{name}.values' must be floating point, got {values.dtype}")
        idx = indices.long()
        if int(idx.min()) < 0 or int(idx.max()) >= numel:
            raise bad(
                f"'{name}.indices' out of range: [{int(idx.min())}, {int(idx.max())}] for a weight of "
                f"{numel} entries"
            )
        steps = idx[1:] - idx[:-1]
        if bool((steps <= 0).any()):
            at = int((steps <= 0).nonzero()[0])
            problem = "duplicated" if int(steps[at]) == 0 else "not sorted"
            raise bad(
                f"'{name}.indices' {problem} at position {at + 1} ({int(idx[at])} then {int(idx[at + 1])})"
            )
        if not lossless_into(values.dtype, delta_dtype):
            raise bad(
                f"'{name}.values' are {str(values.dtype).replace('torch.', '')} but the checkpoint's "
                f"delta_dtype is {config['spiel_config'].get('delta_dtype') or 'float32'}: casting could "
                "overflow or round them (store them in delta_dtype, or a dtype it widens losslessly)"
            )
        fields["values"] = values = values.to(delta_dtype)  # checked after the cast: what readers get
        problem = delta_value_problem(values)
        if problem:
            raise bad(f"'{name}.values' has {problem}")
    return config, tensors
