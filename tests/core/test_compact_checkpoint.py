"""The compact delta form (what ``save_pretrained`` and ``final/`` hold): CSR positions in the narrowest
integer types, no grown_at. It decodes to exactly the flat form, every malformed part is refused with a
message naming the tensor, checkpoints of the flat form (format 1) still load, and it is measured against
a peft LoRA adapter of the same budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from spiel import SpielConfig, get_spiel_model
from spiel.checkpoint import CONFIG_NAME, DELTA_NAME
from spiel.checkpoint_check import InvalidCheckpointError, read_checkpoint, sha256_hex
from spiel.model import SpielModel
from spiel.testing import tiny_model

MODULE = "model.layers.0.self_attn.q_proj"
IDS = torch.tensor([[1, 40, 77, 90, 12, 55, 8]])


def trained(rank_equiv=2, seed=1, delta_dtype="float32"):
    model = get_spiel_model(tiny_model(), SpielConfig(rank_equiv=rank_equiv, seed=seed, delta_dtype=delta_dtype))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.deltas.values():
            layer.values.copy_(torch.randn(layer.k, generator=g) * 0.05)
            layer.grown_at.copy_(torch.randint(1, 50, (layer.k,), generator=g).to(layer.grown_at.dtype))
    return model


@pytest.fixture(scope="module")
def model():
    return trained()


@pytest.fixture(scope="module")
def both(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("forms")
    return model.save_pretrained(root / "compact"), model.save_pretrained(root / "flat", compact=False)


@pytest.mark.parametrize("delta_dtype", ["float32", "bfloat16"])
def test_compact_form_decodes_bit_exact_to_the_flat_form(tmp_path, delta_dtype):
    model = trained(delta_dtype=delta_dtype)
    _, compact = read_checkpoint(model.save_pretrained(tmp_path / "compact"))
    _, flat = read_checkpoint(model.save_pretrained(tmp_path / "flat", compact=False))
    assert compact.keys() == flat.keys() == model.deltas.keys()
    for name, layer in model.deltas.items():
        assert compact[name].keys() == {"indices", "values"}
        assert compact[name]["indices"].dtype == flat[name]["indices"].dtype == layer.indices.dtype
        assert torch.equal(compact[name]["indices"], flat[name]["indices"])
        assert torch.equal(compact[name]["indices"], layer.indices)
        assert compact[name]["values"].dtype == getattr(torch, delta_dtype)
        assert torch.equal(compact[name]["values"], flat[name]["values"])
        # against a dense reference: the same positions of the [out, in] weight
        dense = torch.zeros(layer.out_features, layer.in_features).view(-1)
        dense[layer.indices.long()] = 1
        rows, cols = dense.view(layer.out_features, layer.in_features).nonzero(as_tuple=True)
        assert torch.equal(compact[name]["indices"].long(), rows * layer.in_features + cols)


def test_compact_file_holds_narrow_types_and_no_grown_at(both, model):
    stored = load_file(str(both[0] / DELTA_NAME))
    assert not any(k.endswith((".grown_at", ".indices")) for k in stored)
    for name, layer in model.deltas.items():
        assert stored[f"{name}.col_idx"].dtype == torch.int16  # in_features <= 32767
        assert stored[f"{name}.row_ptr"].dtype == torch.int32
        assert stored[f"{name}.row_ptr"].shape == (layer.out_features + 1,)
        assert stored[f"{name}.values"].dtype == layer.values.dtype


def test_compact_checkpoint_loads_to_the_same_logits(both, model):
    loaded = SpielModel.from_pretrained(tiny_model(), both[0])
    for name, layer in loaded.deltas.items():
        assert torch.equal(layer.indices, model.deltas[name].indices)
        assert torch.equal(layer.values, model.deltas[name].values)
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, model(IDS).logits)


def test_a_flat_format_1_checkpoint_still_loads(both, model, tmp_path):
    """Written as spiel wrote every checkpoint before the compact form (format 1, indices and grown_at)."""
    old = tmp_path / "old"
    old.mkdir()
    for f in both[1].iterdir():
        (old / f.name).write_bytes(f.read_bytes())
    config = json.loads((old / CONFIG_NAME).read_text())
    config["format_version"] = 1
    (old / CONFIG_NAME).write_text(json.dumps(config))
    assert {k.rpartition(".")[2] for k in load_file(str(old / DELTA_NAME))} == {"indices", "values", "grown_at"}
    loaded = SpielModel.from_pretrained(tiny_model(), old)
    for name, layer in loaded.deltas.items():
        assert torch.equal(layer.indices, model.deltas[name].indices)
        assert torch.equal(layer.values, model.deltas[name].values)
        assert torch.equal(layer.grown_at, model.deltas[name].grown_at)


# -- every guard of the compact decode ------------------------------------------------------------------
def key(field):
    return f"{MODULE}.{field}"


def set_at(field, position, value):
    def change(t):
        t[key(field)][position] = value
    return change


def swap_first_two_columns(t):
    cols, ptr = t[key("col_idx")], t[key("row_ptr")]
    row = int(((ptr[1:] - ptr[:-1]) >= 2).nonzero()[0])  # a row with two entries
    start = int(ptr[row])
    cols[start], cols[start + 1] = cols[start + 1].clone(), cols[start].clone()


def repeat_a_column(t):
    cols, ptr = t[key("col_idx")], t[key("row_ptr")]
    row = int(((ptr[1:] - ptr[:-1]) >= 2).nonzero()[0])
    cols[int(ptr[row]) + 1] = cols[int(ptr[row])]


def decrease_row_ptr(t):
    ptr = t[key("row_ptr")]
    row = int(((ptr[1:] - ptr[:-1]) >= 1).nonzero()[0]) + 1  # ptr[row] > ptr[row - 1]: make it smaller
    ptr[row] = ptr[row - 1] - 1


def retype(field, dtype):
    def change(t):
        t[key(field)] = t[key(field)].to(dtype)
    return change


def reshape(field, tensor_of):
    def change(t):
        t[key(field)] = tensor_of(t[key(field)])
    return change


def drop(field):
    def change(t):
        del t[key(field)]
    return change


def add_indices(t):
    t[key("indices")] = torch.arange(t[key("values")].numel(), dtype=torch.int32)


GUARDS = [
    ("mixed-forms", add_indices, r"mixes the compact form .* with '.*q_proj.indices'"),
    ("no-col-idx", drop("col_idx"), r"missing tensor '.*q_proj.col_idx' \(compact form\)"),
    ("no-row-ptr", drop("row_ptr"), r"missing tensor '.*q_proj.row_ptr' \(compact form\)"),
    ("row-ptr-shape", reshape("row_ptr", lambda p: p[:-1].clone()), r"row_ptr' has shape \[\d+\], expected \[\d+\] \(out_features \+ 1\)"),
    ("col-idx-shape", reshape("col_idx", lambda c: c[:-1].clone()), r"col_idx' has shape \[\d+\], expected \[\d+\] \(k of"),
    ("row-ptr-int16", retype("row_ptr", torch.int16), r"row_ptr' must be int32 or int64, got torch.int16"),
    ("col-idx-float", retype("col_idx", torch.float32), r"col_idx' must hold integers, got torch.float32"),
    ("row-ptr-start", set_at("row_ptr", 0, 1), r"row_ptr' must start at 0 and end at k=\d+, got 1 \.\.\."),
    ("row-ptr-end", set_at("row_ptr", -1, 1), r"row_ptr' must start at 0 and end at k=\d+, got 0 \.\.\. 1"),
    ("row-ptr-decreasing", decrease_row_ptr, r"row_ptr' decreases at row \d+"),
    ("col-negative", set_at("col_idx", 0, -1), r"col_idx' out of range: \[-1, \d+\] for 256 columns"),
    ("col-too-large", set_at("col_idx", -1, 256), r"col_idx' out of range: \[0, 256\] for 256 columns"),
    ("cols-unsorted", swap_first_two_columns, r"col_idx' not strictly increasing in row \d+ at position"),
    ("cols-repeated", repeat_a_column, r"col_idx' not strictly increasing in row \d+ at position"),
]


@pytest.mark.parametrize("case, corrupt, message", GUARDS, ids=[g[0] for g in GUARDS])
def test_a_malformed_compact_delta_is_refused_naming_file_and_tensor(both, tmp_path, case, corrupt, message):
    bad = tmp_path / case
    bad.mkdir()
    for f in both[0].iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    tensors = load_file(str(bad / DELTA_NAME))
    corrupt(tensors)
    save_file(tensors, str(bad / DELTA_NAME))  # and the new hash recorded, as a buggy writer would
    config = json.loads((bad / CONFIG_NAME).read_text())
    config["delta_sha256"] = sha256_hex((bad / DELTA_NAME).read_bytes())
    (bad / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(InvalidCheckpointError, match=message) as err:
        SpielModel.from_pretrained(tiny_model(), bad)
    assert str(bad / DELTA_NAME) in str(err.value)


# -- size against a peft LoRA adapter of the same budget ------------------------------------------------
def delta_bytes(directory: Path, name: str) -> int:
    return (directory / name).stat().st_size


@pytest.mark.parametrize("delta_dtype", ["float32", "bfloat16"])
def test_compact_delta_size_against_a_peft_lora_adapter_of_equal_budget(tmp_path, delta_dtype):
    from peft import LoraConfig, get_peft_model

    rank = 8
    model = trained(rank_equiv=rank, delta_dtype=delta_dtype)
    compact = delta_bytes(model.save_pretrained(tmp_path / "compact"), DELTA_NAME)
    flat = delta_bytes(model.save_pretrained(tmp_path / "flat", compact=False), DELTA_NAME)
    targets = sorted({n.rpartition(".")[2] for n in model.deltas})
    lora = get_peft_model(tiny_model(), LoraConfig(r=rank, lora_alpha=16, target_modules=targets))
    lora.to(getattr(torch, delta_dtype))  # LoRA's A and B in the delta's value dtype
    lora_params = sum(p.numel() for n, p in lora.named_parameters() if "lora_" in n)
    assert abs(lora_params - model.num_tunable()) <= 1e-3 * lora_params  # equal budget (k rounds per module)
    lora.save_pretrained(tmp_path / "lora")
    adapter = delta_bytes(tmp_path / "lora", "adapter_model.safetensors")
    print(f"tiny model, rank {rank}, {delta_dtype}: flat {flat:,} B, compact {compact:,} B, "
          f"peft LoRA {adapter:,} B (compact/LoRA {compact / adapter:.2f}x, flat/LoRA {flat / adapter:.2f}x)")
    value_bytes = torch.finfo(getattr(torch, delta_dtype)).bits // 8
    k = model.num_tunable()
    assert adapter >= lora_params * value_bytes
    # values + int16 columns + int32 row pointers + the safetensors header (< 160 bytes a tensor)
    rows = sum(layer.out_features + 1 for layer in model.deltas.values())
    assert 0 < compact - (k * (value_bytes + 2) + rows * 4) < 160 * 3 * len(model.deltas)
    assert compact < flat / 1.9
    # the int16 columns cost 2 bytes an entry more than LoRA's: 1.5x in fp32, 2x in bf16 (+ row pointers)
    assert compact <= (value_bytes + 2) / value_bytes * adapter + rows * 4 + 160 * 3 * len(model.deltas)
