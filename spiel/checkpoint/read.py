"""Reading a SpIEL checkpoint back, refusing anything damaged or malformed.

Every reader (``SpielModel.from_pretrained``, ``compose``, spiel-eval, resume) goes through
:func:`read_checkpoint`, which raises :class:`InvalidCheckpointError` with one message naming the file and
the problem, before any model is touched:

- ``spiel_config.json``: a JSON object; ``spiel_config`` a valid SpielConfig; ``modules`` maps each
  module to ``k >= 1``, a ``shape`` of two positive integers and a base-weight ``fingerprint`` (required:
  without it the checkpoint could be loaded onto any base of the same shape; ``allow_unverified_base``
  lifts that, and the message names the override);
- ``spiel_delta.safetensors``: matches the SHA-256 recorded in the config (so a truncated file or one
  flipped bit is caught even where it would still parse), parses, and holds exactly ``M.indices`` and
  ``M.values`` (and optionally ``M.grown_at``, any integer dtype) per module, each of shape ``[k]``;
  indices integer, sorted, unique and inside the weight; values floating point and finite. Or, in
  the compact form (what ``save_pretrained`` writes by default, format 3), ``M.values``, ``M.low_bits``
  and ``M.high_bits``: the positions Elias–Fano coded (``spiel.checkpoint.elias_fano``), each uint8 of the
  size k and the shape imply, zero padding bits, exactly k set bits in the high bitmap, and positions
  that decode strictly increasing inside the weight. Or the compact form of format 2, ``M.values``,
  ``M.row_ptr`` and ``M.col_idx``: row pointers of shape ``[out+1]``, int32 or int64, starting at 0,
  never decreasing, ending at k; columns ``[k]`` of an integer type, inside the row and strictly
  increasing within each row. A compact form is decoded here into the flat sorted indices, so readers
  see one form.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch

from spiel.checkpoint.format import CONFIG_NAME, DELTA_NAME, FINGERPRINT_SIZE, FORMAT_VERSION
from spiel.checkpoint.kind import DESCRIPTIONS, detect_kind

UNVERIFIED_BASE_OVERRIDE = "allow_unverified_base=True"
REQUIRED_FIELDS = ("indices", "values")
OPTIONAL_FIELDS = ("grown_at",)
COMPACT_FIELDS = ("values", "row_ptr", "col_idx")  # format 2 (CSR)
ELIAS_FANO_FIELDS = ("values", "low_bits", "high_bits")  # format 3
ROW_PTR_DTYPES = (torch.int32, torch.int64)


class InvalidCheckpointError(ValueError):
    """A checkpoint file is damaged or malformed; the message names the file and the problem."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _not_a_checkpoint(directory: Path, missing: str) -> FileNotFoundError:
    kind = detect_kind(directory)
    hint = f" (it looks like {DESCRIPTIONS[kind]})" if kind in ("peft", "full") else ""
    return FileNotFoundError(f"{directory} is not a complete SpIEL checkpoint: no {missing}{hint}")


def read_spiel_config(directory) -> dict:
    """``spiel_config.json`` of ``directory``, checked for shape (not against any model)."""
    from spiel.spiel_config import SpielConfig

    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise _not_a_checkpoint(directory, CONFIG_NAME)

    def bad(problem: str) -> InvalidCheckpointError:
        return InvalidCheckpointError(f"{path}: {problem}")

    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise bad(f"not UTF-8 text ({e})") from None
    except json.JSONDecodeError as e:
        raise bad(f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(config, dict):
        raise bad(f"expected a JSON object, got a {type(config).__name__}")
    version = config.get("format_version", 0)
    if not _is_int(version):
        raise bad(f"format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise bad(f"checkpoint format {version}; this spiel reads up to {FORMAT_VERSION}: upgrade spiel")
    if not isinstance(config.get("spiel_config"), dict):
        raise bad("no 'spiel_config' object")
    try:
        SpielConfig.from_dict(config["spiel_config"])
    except (TypeError, ValueError) as e:
        raise bad(f"spiel_config: {e}") from None
    if "base_model" in config and not isinstance(config["base_model"], (dict, str)):
        raise bad(f"base_model must be an object, got {config['base_model']!r}")
    sha = config.get("delta_sha256")
    if sha is not None and not (isinstance(sha, str) and len(sha) == 64):
        raise bad(f"delta_sha256 must be a 64-character hex digest, got {sha!r}")
    modules = config.get("modules")
    if not isinstance(modules, dict) or not modules:
        raise bad("'modules' must be a non-empty object (module name -> k, shape, fingerprint)")
    for name, entry in modules.items():
        where = f"modules[{name!r}]"
        if not isinstance(entry, dict):
            raise bad(f"{where} must be an object, got {entry!r}")
        shape = entry.get("shape")
        if not (isinstance(shape, list) and len(shape) == 2 and all(_is_int(s) and s > 0 for s in shape)):
            raise bad(f"{where}.shape must be [out_features, in_features] (positive integers), got {shape!r}")
        k = entry.get("k")
        if not (_is_int(k) and 1 <= k <= shape[0] * shape[1]):
            raise bad(f"{where}.k must be an integer in [1, {shape[0] * shape[1]}], got {k!r}")
        fingerprint = entry.get("fingerprint")
        if fingerprint is not None and not (
                isinstance(fingerprint, list) and len(fingerprint) == FINGERPRINT_SIZE
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                        for v in fingerprint)):
            raise bad(f"{where}.fingerprint must be {FINGERPRINT_SIZE} finite numbers")
    return config


def read_checkpoint(directory, *, allow_unverified_base: bool = False,
                    override: str | None = UNVERIFIED_BASE_OVERRIDE) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """(config, {module: {"indices", "values"[, "grown_at"]}}) of a checkpoint that passed every check.

    ``override``: how the caller's user lifts the fingerprint requirement (named in the message), or
    None where there is no such choice (resume: spiel always writes fingerprints)."""
    from safetensors.torch import load

    directory = Path(directory)
    config = read_spiel_config(directory)
    modules = config["modules"]
    unverified = [n for n, m in modules.items() if "fingerprint" not in m]
    if unverified and not allow_unverified_base:
        how = (f"if you are sure the base model is the one it was trained on, pass {override}" if override else
               "spiel writes them into every checkpoint, so this one was altered")
        raise InvalidCheckpointError(
            f"{directory / CONFIG_NAME}: no base-weight fingerprint for {len(unverified)} of {len(modules)} "
            f"module(s) (e.g. {unverified[0]}), so it cannot be checked against the base model it is loaded "
            f"into; {how}")

    path = directory / DELTA_NAME
    if not path.is_file():
        raise _not_a_checkpoint(directory, DELTA_NAME)

    def bad(problem: str) -> InvalidCheckpointError:
        return InvalidCheckpointError(f"{path}: {problem}")

    data = path.read_bytes()
    if "delta_sha256" in config and sha256_hex(data) != config["delta_sha256"]:
        raise bad(f"the file is damaged (truncated or altered): its SHA-256 differs from the one recorded in "
                  f"{CONFIG_NAME} ({len(data):,} bytes)")
    try:
        flat = load(data)
    except Exception as e:  # safetensors raises its own error type (and others) on a damaged file
        raise bad(f"not a readable safetensors file ({type(e).__name__}: {e})") from None

    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in flat.items():
        name, _, field = key.rpartition(".")
        if name not in modules or field not in REQUIRED_FIELDS + OPTIONAL_FIELDS + COMPACT_FIELDS + ELIAS_FANO_FIELDS:
            raise bad(f"unexpected tensor {key!r} (spiel_config.json lists no such module or field)")
        tensors.setdefault(name, {})[field] = tensor
    for name, entry in modules.items():
        k = entry["k"]
        numel = entry["shape"][0] * entry["shape"][1]
        fields = tensors.get(name, {})
        if "low_bits" in fields or "high_bits" in fields:
            fields = tensors[name] = _decode_elias_fano(name, entry, fields, bad)
        elif "row_ptr" in fields or "col_idx" in fields:
            fields = tensors[name] = decode_csr(name, entry, fields, bad)
        for field in REQUIRED_FIELDS:
            if field not in fields:
                raise bad(f"missing tensor '{name}.{field}'")
        for field, t in fields.items():
            if tuple(t.shape) != (k,):
                raise bad(f"'{name}.{field}' has shape {list(t.shape)}, expected [{k}] (k of {name})")
        indices, values = fields["indices"], fields["values"]
        for field in ("indices", *OPTIONAL_FIELDS):
            if field in fields and (fields[field].is_floating_point() or fields[field].is_complex()
                                    or fields[field].dtype == torch.bool):
                raise bad(f"'{name}.{field}' must hold integers, got {fields[field].dtype}")
        if not values.is_floating_point():
            raise bad(f"'{name}.values' must be floating point, got {values.dtype}")
        idx = indices.long()
        if int(idx.min()) < 0 or int(idx.max()) >= numel:
            raise bad(f"'{name}.indices' out of range: [{int(idx.min())}, {int(idx.max())}] for a weight of "
                      f"{numel} entries")
        steps = idx[1:] - idx[:-1]
        if bool((steps <= 0).any()):
            at = int((steps <= 0).nonzero()[0])
            problem = "duplicated" if int(steps[at]) == 0 else "not sorted"
            raise bad(f"'{name}.indices' {problem} at position {at + 1} ({int(idx[at])} then {int(idx[at + 1])})")
        finite = torch.isfinite(values)
        if not bool(finite.all()):
            bad_count = int((~finite).sum())
            first = int((~finite).nonzero()[0])
            raise bad(f"'{name}.values' has {bad_count} non-finite value(s) of {k} (NaN/Inf; first at position "
                      f"{first}: {float(values[first])})")
    return config, tensors


def _check_form_fields(name: str, fields: dict, expected, positions: str, bad) -> None:
    """A compact module holds exactly its form's tensors: none of another form, none missing."""
    extra = sorted(set(fields) - set(expected))
    if extra:
        raise bad(f"'{name}' mixes the compact form ({positions}) with '{name}.{extra[0]}'")
    for field in expected:
        if field not in fields:
            raise bad(f"missing tensor '{name}.{field}' (compact form)")


def _decode_elias_fano(name: str, entry: dict, fields: dict[str, torch.Tensor], bad) -> dict[str, torch.Tensor]:
    """The flat form ``{"indices", "values"}`` of a module's Elias–Fano coded positions (format 3), after
    checking them."""
    from spiel.checkpoint import elias_fano
    from spiel.delta.indices import index_dtype

    _check_form_fields(name, fields, ELIAS_FANO_FIELDS, "low_bits, high_bits", bad)
    numel = entry["shape"][0] * entry["shape"][1]
    try:
        positions = elias_fano.decode(fields["low_bits"], fields["high_bits"], numel, entry["k"], prefix=f"{name}.")
    except ValueError as e:
        raise bad(str(e)) from None
    return {"indices": positions.to(index_dtype(numel)), "values": fields["values"]}


def decode_csr(name: str, entry: dict, fields: dict[str, torch.Tensor], bad) -> dict[str, torch.Tensor]:
    """The flat form ``{"indices", "values"}`` of a module's compact (CSR, format 2) tensors, after
    checking them."""
    from spiel.delta.indices import index_dtype

    _check_form_fields(name, fields, COMPACT_FIELDS, "row_ptr, col_idx", bad)
    k = entry["k"]
    out_features, in_features = entry["shape"]
    row_ptr, col_idx = fields["row_ptr"], fields["col_idx"]
    if tuple(row_ptr.shape) != (out_features + 1,):
        raise bad(f"'{name}.row_ptr' has shape {list(row_ptr.shape)}, expected [{out_features + 1}] (out_features + 1)")
    if tuple(col_idx.shape) != (k,):
        raise bad(f"'{name}.col_idx' has shape {list(col_idx.shape)}, expected [{k}] (k of {name})")
    if row_ptr.dtype not in ROW_PTR_DTYPES:
        raise bad(f"'{name}.row_ptr' must be int32 or int64, got {row_ptr.dtype}")
    if col_idx.is_floating_point() or col_idx.is_complex() or col_idx.dtype == torch.bool:
        raise bad(f"'{name}.col_idx' must hold integers, got {col_idx.dtype}")
    ptr = row_ptr.long()
    if int(ptr[0]) != 0 or int(ptr[-1]) != k:
        raise bad(f"'{name}.row_ptr' must start at 0 and end at k={k}, got {int(ptr[0])} ... {int(ptr[-1])}")
    counts = ptr[1:] - ptr[:-1]
    if bool((counts < 0).any()):
        row = int((counts < 0).nonzero()[0])
        raise bad(f"'{name}.row_ptr' decreases at row {row} ({int(ptr[row])} then {int(ptr[row + 1])})")
    cols = col_idx.long()
    if int(cols.min()) < 0 or int(cols.max()) >= in_features:
        raise bad(f"'{name}.col_idx' out of range: [{int(cols.min())}, {int(cols.max())}] for "
                  f"{in_features} columns")
    rows = torch.repeat_interleave(torch.arange(out_features), counts)
    same_row = rows[1:] == rows[:-1]
    not_increasing = same_row & (cols[1:] <= cols[:-1])
    if bool(not_increasing.any()):
        at = int(not_increasing.nonzero()[0])
        raise bad(f"'{name}.col_idx' not strictly increasing in row {int(rows[at])} at position {at + 1} "
                  f"({int(cols[at])} then {int(cols[at + 1])})")
    indices = (rows * in_features + cols).to(index_dtype(out_features * in_features))
    return {"indices": indices, "values": fields["values"]}
