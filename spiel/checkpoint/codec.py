"""The delta tensors' forms, per target module ``M`` (field names as in ``spiel_delta.safetensors``):

- flat (training checkpoints; resume needs it): ``M.indices`` (sorted flat ``row·in + col``), ``M.values``,
  optionally ``M.grown_at``;
- compact, format 3 (what ``save_pretrained`` writes by default): ``M.values`` and the positions Elias–Fano
  coded, ``M.low_bits`` and ``M.high_bits`` (uint8; the bit layout in ``elias_fano``);
- legacy compact, format 2 (read only): ``M.values``, CSR ``M.row_ptr`` and ``M.col_idx``.

Readers see one form: the compact ones are decoded (after their checks) into the flat one.
"""

from __future__ import annotations

import torch

from spiel.checkpoint import elias_fano
from spiel.delta.indices import index_dtype

FLAT_FIELDS = ("indices", "values")
OPTIONAL_FIELDS = ("grown_at",)
ELIAS_FANO_FIELDS = ("values", "low_bits", "high_bits")  # format 3
COMPACT_FIELDS = ("values", "row_ptr", "col_idx")  # format 2 (CSR), legacy: read only
ROW_PTR_DTYPES = (torch.int32, torch.int64)


def compact_delta(indices: torch.Tensor, values: torch.Tensor, shape) -> dict[str, torch.Tensor]:
    """``{"values", "low_bits", "high_bits"}`` of a delta with sorted flat ``indices`` over a ``shape``
    weight: the positions Elias–Fano coded (:func:`decode_elias_fano` decodes them back)."""
    return {"values": values.detach().cpu(), **elias_fano.encode(indices, shape[0] * shape[1])}


def decode_module(name: str, entry: dict, fields: dict[str, torch.Tensor], bad) -> dict[str, torch.Tensor]:
    """The flat form of one module's tensors, whatever form they were saved in."""
    if "low_bits" in fields or "high_bits" in fields:
        return decode_elias_fano(name, entry, fields, bad)
    if "row_ptr" in fields or "col_idx" in fields:
        return decode_csr_legacy(name, entry, fields, bad)
    return fields


def _check_form_fields(name: str, fields: dict, expected, positions: str, bad) -> None:
    """A compact module holds exactly its form's tensors: none of another form, none missing."""
    extra = sorted(set(fields) - set(expected))
    if extra:
        raise bad(f"'{name}' mixes the compact form ({positions}) with '{name}.{extra[0]}'")
    for field in expected:
        if field not in fields:
            raise bad(f"missing tensor '{name}.{field}' (compact form)")


def decode_elias_fano(
    name: str, entry: dict, fields: dict[str, torch.Tensor], bad
) -> dict[str, torch.Tensor]:
    """The flat form ``{"indices", "values"}`` of a module's Elias–Fano coded positions (format 3), after
    checking them."""
    _check_form_fields(name, fields, ELIAS_FANO_FIELDS, "low_bits, high_bits", bad)
    numel = entry["shape"][0] * entry["shape"][1]
    try:
        positions = elias_fano.decode(
            fields["low_bits"], fields["high_bits"], numel, entry["k"], prefix=f"{name}."
        )
    except ValueError as e:
        raise bad(str(e)) from None
    return {"indices": positions.to(index_dtype(numel)), "values": fields["values"]}


def decode_csr_legacy(
    name: str, entry: dict, fields: dict[str, torch.Tensor], bad
) -> dict[str, torch.Tensor]:
    """Legacy (format 2, read only): the flat form ``{"indices", "values"}`` of a module's CSR tensors, after
    checking them."""
    _check_form_fields(name, fields, COMPACT_FIELDS, "row_ptr, col_idx", bad)
    k = entry["k"]
    out_features, in_features = entry["shape"]
    row_ptr, col_idx = fields["row_ptr"], fields["col_idx"]
    if tuple(row_ptr.shape) != (out_features + 1,):
        raise bad(
            f"'{name}.row_ptr' has shape {list(row_ptr.shape)}, expected [{out_features + 1}] (out_features + 1)"
        )
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
        raise bad(
            f"'{name}.col_idx' out of range: [{int(cols.min())}, {int(cols.max())}] for {in_features} columns"
        )
    rows = torch.repeat_interleave(torch.arange(out_features), counts)
    same_row = rows[1:] == rows[:-1]
    not_increasing = same_row & (cols[1:] <= cols[:-1])
    if bool(not_increasing.any()):
        at = int(not_increasing.nonzero()[0])
        raise bad(
            f"'{name}.col_idx' not strictly increasing in row {int(rows[at])} at position {at + 1} "
            f"({int(cols[at])} then {int(cols[at + 1])})"
        )
    indices = (rows * in_features + cols).to(index_dtype(out_features * in_features))
    return {"indices": indices, "values": fields["values"]}
