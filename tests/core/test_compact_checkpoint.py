"""The compact delta form (what ``save_pretrained`` and ``final/`` hold): positions Elias–Fano coded
(format 3), no grown_at. It decodes to exactly the flat form, every malformed part is refused with a
message naming the file and the tensor, checkpoints of the flat form (format 1) and of the CSR form
(format 2) still load, and it is measured against a peft LoRA adapter of the same budget."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from spiel import SpielConfig, get_spiel_model
from spiel.checkpoint import elias_fano
from spiel.checkpoint.codec import compact_delta
from spiel.checkpoint.format import CONFIG_NAME, DELTA_NAME, FORMAT_VERSION
from spiel.checkpoint.read import InvalidCheckpointError, read_checkpoint, sha256_hex
from spiel.checkpoint.write import write_checkpoint
from spiel.delta.indices import csr_pattern
from spiel.model.spiel_model import SpielModel
from spiel.testing import tiny_model

MODULE = "model.layers.0.self_attn.q_proj"
IDS = torch.tensor([[1, 40, 77, 90, 12, 55, 8]])


def trained(rank_equiv=2, seed=1, delta_dtype="float32"):
    model = get_spiel_model(
        tiny_model(), SpielConfig(rank_equiv=rank_equiv, seed=seed, delta_dtype=delta_dtype)
    )
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


def write_format_2(flat_dir: Path, out: Path) -> Path:
    """A compact checkpoint as spiel wrote it in format 2: positions as CSR (int32 row pointers, int16
    columns), values, no grown_at."""
    config = json.loads((flat_dir / CONFIG_NAME).read_text())
    stored = load_file(str(flat_dir / DELTA_NAME))
    tensors = {}
    for name, entry in config["modules"].items():
        row_ptr, col_idx = csr_pattern(stored[f"{name}.indices"].long(), *entry["shape"])
        tensors.update(
            {
                f"{name}.values": stored[f"{name}.values"],
                f"{name}.row_ptr": row_ptr.to(torch.int32),
                f"{name}.col_idx": col_idx.to(torch.int16),
            }
        )
    config["format_version"] = 2
    return write_checkpoint(out, config, tensors)


@pytest.fixture(scope="module")
def csr(both, tmp_path_factory):
    return write_format_2(both[1], tmp_path_factory.mktemp("format2") / "csr")


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


def test_compact_file_holds_the_coded_positions_and_no_grown_at(both, model):
    config = json.loads((both[0] / CONFIG_NAME).read_text())
    assert config["format_version"] == FORMAT_VERSION == 3
    stored = load_file(str(both[0] / DELTA_NAME))
    assert {k.rpartition(".")[2] for k in stored} == {"values", "low_bits", "high_bits"}
    for name, layer in model.deltas.items():
        n = layer.out_features * layer.in_features
        low, high = elias_fano.encoded_sizes(n, layer.k)
        assert stored[f"{name}.low_bits"].dtype == stored[f"{name}.high_bits"].dtype == torch.uint8
        assert stored[f"{name}.low_bits"].shape == (low,) and stored[f"{name}.high_bits"].shape == (high,)
        assert stored[f"{name}.values"].dtype == layer.values.dtype


@pytest.mark.parametrize(
    "positions",
    [
        pytest.param(torch.tensor([0]), id="k=1 first"),
        pytest.param(torch.tensor([256 * 256 - 1]), id="k=1 last"),
        pytest.param(torch.arange(5 * 256, 6 * 256), id="one full row, the others empty"),
        pytest.param(torch.arange(256 * 256), id="k=n"),
    ],
)
def test_extreme_position_sets_round_trip_through_a_checkpoint(both, tmp_path, positions):
    config = json.loads((both[0] / CONFIG_NAME).read_text())
    tensors = load_file(str(both[0] / DELTA_NAME))
    k = positions.numel()
    values = torch.randn(k)
    config["modules"][MODULE]["k"] = k
    tensors.update({key(f): t for f, t in compact_delta(positions.int(), values, (256, 256)).items()})
    _, read = read_checkpoint(write_checkpoint(tmp_path / "ckpt", config, tensors))
    assert torch.equal(read[MODULE]["indices"], positions.int())
    assert torch.equal(read[MODULE]["values"], values)


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
    assert {k.rpartition(".")[2] for k in load_file(str(old / DELTA_NAME))} == {
        "indices",
        "values",
        "grown_at",
    }
    loaded = SpielModel.from_pretrained(tiny_model(), old)
    for name, layer in loaded.deltas.items():
        assert torch.equal(layer.indices, model.deltas[name].indices)
        assert torch.equal(layer.values, model.deltas[name].values)
        assert torch.equal(layer.grown_at, model.deltas[name].grown_at)


def test_a_csr_format_2_checkpoint_still_loads(csr, model):
    assert {k.rpartition(".")[2] for k in load_file(str(csr / DELTA_NAME))} == {
        "values",
        "row_ptr",
        "col_idx",
    }
    loaded = SpielModel.from_pretrained(tiny_model(), csr)
    for name, layer in loaded.deltas.items():
        assert torch.equal(layer.indices, model.deltas[name].indices)
        assert torch.equal(layer.values, model.deltas[name].values)
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, model(IDS).logits)


# -- every guard of the compact decodes ------------------------------------------------------------------
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
    (
        "row-ptr-shape",
        reshape("row_ptr", lambda p: p[:-1].clone()),
        r"row_ptr' has shape \[\d+\], expected \[\d+\] \(out_features \+ 1\)",
    ),
    (
        "col-idx-shape",
        reshape("col_idx", lambda c: c[:-1].clone()),
        r"col_idx' has shape \[\d+\], expected \[\d+\] \(k of",
    ),
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


def corrupted_copy(source: Path, bad: Path, corrupt) -> Path:
    """``source`` with its delta tensors changed by ``corrupt`` and the new hash recorded, as a buggy
    writer would leave it."""
    bad.mkdir()
    for f in source.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    tensors = load_file(str(bad / DELTA_NAME))
    corrupt(tensors)
    save_file(tensors, str(bad / DELTA_NAME))
    config = json.loads((bad / CONFIG_NAME).read_text())
    config["delta_sha256"] = sha256_hex((bad / DELTA_NAME).read_bytes())
    (bad / CONFIG_NAME).write_text(json.dumps(config))
    return bad


@pytest.mark.parametrize("case, corrupt, message", GUARDS, ids=[g[0] for g in GUARDS])
def test_a_malformed_csr_delta_is_refused_naming_file_and_tensor(csr, tmp_path, case, corrupt, message):
    bad = corrupted_copy(csr, tmp_path / case, corrupt)
    with pytest.raises(InvalidCheckpointError, match=message) as err:
        SpielModel.from_pretrained(tiny_model(), bad)
    assert str(bad / DELTA_NAME) in str(err.value)


def flip_high_bit(t):
    """Clear the first set bit of the bitmap: one position fewer than k."""
    high = t[key("high_bits")]
    at = int((high != 0).nonzero()[0])
    high[at] &= high[at] - 1


def repeat_a_position(t):
    """Give the second position the first one's low bits: where both share a high part, a repeat."""
    low, high = t[key("low_bits")], t[key("high_bits")]
    n = 256 * 256
    k = t[key("values")].numel()
    width = elias_fano.low_width(n, k)
    bits, ones = elias_fano.unpack_bits(low), elias_fano.unpack_bits(high).nonzero().view(-1)
    i = int(((ones[1:] - 1) == ones[:-1]).nonzero()[0])  # positions i and i+1 share a high part
    bits[(i + 1) * width : (i + 2) * width] = bits[i * width : (i + 1) * width]
    t[key("low_bits")] = elias_fano.pack_bits(bits[: k * width])


EF_GUARDS = [
    ("mixed-forms", add_indices, r"mixes the compact form \(low_bits, high_bits\) with '.*q_proj.indices'"),
    (
        "mixed-with-csr",
        lambda t: t.update({key("row_ptr"): torch.zeros(257, dtype=torch.int32)}),
        r"mixes the compact form \(low_bits, high_bits\) with '.*q_proj.row_ptr'",
    ),
    ("no-low-bits", drop("low_bits"), r"missing tensor '.*q_proj.low_bits' \(compact form\)"),
    ("no-high-bits", drop("high_bits"), r"missing tensor '.*q_proj.high_bits' \(compact form\)"),
    ("no-values", drop("values"), r"missing tensor '.*q_proj.values' \(compact form\)"),
    ("low-int8", retype("low_bits", torch.int8), r"'.*q_proj.low_bits' must be uint8, got torch.int8"),
    (
        "high-truncated",
        reshape("high_bits", lambda h: h[:-1].clone()),
        r"'.*q_proj.high_bits' has shape \[\d+\], expected \[\d+\] \(\d+ bits: k=\d+ positions in \[0, 65536\)",
    ),
    (
        "values-short",
        reshape("values", lambda v: v[:-1].clone()),
        r"'.*q_proj.values' has shape \[\d+\], expected",
    ),
    ("high-bit-lost", flip_high_bit, r"'.*q_proj.high_bits' holds \d+ set bits, expected one per position"),
    (
        "repeated-position",
        repeat_a_position,
        r"'.*q_proj.low_bits' and 'high_bits' decode to positions not strictly",
    ),
]


@pytest.mark.parametrize("case, corrupt, message", EF_GUARDS, ids=[g[0] for g in EF_GUARDS])
def test_a_malformed_compact_delta_is_refused_naming_file_and_tensor(both, tmp_path, case, corrupt, message):
    bad = corrupted_copy(both[0], tmp_path / case, corrupt)
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
    print(
        f"tiny model, rank {rank}, {delta_dtype}: flat {flat:,} B, compact {compact:,} B, "
        f"peft LoRA {adapter:,} B (compact/LoRA {compact / adapter:.2f}x, flat/LoRA {flat / adapter:.2f}x)"
    )
    value_bytes = torch.finfo(getattr(torch, delta_dtype)).bits // 8
    k = model.num_tunable()
    assert adapter >= lora_params * value_bytes
    # values + the coded positions + the safetensors header (< 160 bytes a tensor)
    positions = sum(
        sum(elias_fano.encoded_sizes(layer.out_features * layer.in_features, layer.k))
        for layer in model.deltas.values()
    )
    assert 0 < compact - (k * value_bytes + positions) < 160 * 3 * len(model.deltas)
    for layer in model.deltas.values():  # Elias–Fano: at most 2 + log2(n / k) bits a position (+ padding)
        n = layer.out_features * layer.in_features
        bits = 8 * sum(elias_fano.encoded_sizes(n, layer.k))
        assert bits <= layer.k * (2 + math.log2(n / layer.k)) + 16
    assert compact < flat / 2
    assert compact <= 1.5 * adapter


# -- the legacy CSR decoder on hand-written tensors: every value in its messages, and the flat positions -----
def csr_fields(row_ptr, col_idx):
    return {
        "values": torch.ones(len(col_idx)),
        "row_ptr": torch.tensor(row_ptr, dtype=torch.int32),
        "col_idx": torch.tensor(col_idx, dtype=torch.int16),
    }


@pytest.mark.parametrize(
    "row_ptr, col_idx, message",
    [
        ([0, 2, 4], [1, 3, 4, 2], "'m.col_idx' not strictly increasing in row 1 at position 3 (4 then 2)"),
        ([0, 3, 4], [0, 3, 3, 0], "'m.col_idx' not strictly increasing in row 0 at position 2 (3 then 3)"),
        ([0, 3, 2], [0, 1, 2, 3], "'m.row_ptr' must start at 0 and end at k=4, got 0 ... 2"),
        ([0, 4], [0, 1, 2, 3], "'m.row_ptr' has shape [2], expected [3] (out_features + 1)"),
        ([0, 2, 4], [0, 1, 2], "'m.col_idx' has shape [3], expected [4] (k of m)"),
        ([0, 3, 4], [0, 1, 5, 2], "'m.col_idx' out of range: [0, 5] for 5 columns"),
        ([0, 3, 4], [0, -1, 2, 2], "'m.col_idx' out of range: [-1, 2] for 5 columns"),
    ],
)
def test_legacy_csr_refusals_name_the_exact_values(row_ptr, col_idx, message):
    from spiel.checkpoint.codec import decode_csr_legacy

    with pytest.raises(ValueError) as err:
        decode_csr_legacy("m", {"k": 4, "shape": [2, 5]}, csr_fields(row_ptr, col_idx), ValueError)
    assert str(err.value) == message


def test_legacy_csr_decodes_to_row_times_in_plus_col_with_empty_rows():
    """Rows 0 and 2 empty, a last column and a first one: positions row·5 + col (hand-computed)."""
    from spiel.checkpoint.codec import decode_csr_legacy

    fields = csr_fields([0, 0, 2, 2, 3], [0, 4, 4])
    flat = decode_csr_legacy("m", {"k": 3, "shape": [4, 5]}, fields, ValueError)
    assert flat["indices"].tolist() == [5, 9, 19] and flat["values"] is fields["values"]
    with pytest.raises(ValueError, match=r"^'m.row_ptr' decreases at row 1 \(2 then 1\)$"):
        decode_csr_legacy("m", {"k": 3, "shape": [4, 5]}, csr_fields([0, 2, 1, 2, 3], [0, 4, 4]), ValueError)


def test_legacy_csr_positions_past_int32_are_int64():
    """A weight of 2^31 + 2^16 entries: its last position does not fit int32, the first does (exactly)."""
    from spiel.checkpoint.codec import decode_csr_legacy

    out_f, in_f = 1 << 16, (1 << 15) + 1
    row_ptr = [0] + [1] * (out_f - 1) + [2]  # row 0 holds column 0, the last row its last column
    fields = csr_fields(row_ptr, [0, 0])
    fields["col_idx"] = torch.tensor([0, in_f - 1], dtype=torch.int32)  # past int16
    flat = decode_csr_legacy("m", {"k": 2, "shape": [out_f, in_f]}, fields, ValueError)
    assert flat["indices"].dtype == torch.int64 and flat["indices"].tolist() == [0, out_f * in_f - 1]
    assert out_f * in_f - 1 > 2**31 - 1
