"""A delta is loaded only onto the base it was trained on (issue cases: a base differing in 1% of one matrix's
entries is refused; the same base in another float dtype, or 4-bit, is not), and ``load_delta`` checks the
positions it keeps itself."""

from __future__ import annotations

import json
import time

import pytest
import torch

from spiel import SpielConfig, get_spiel_model
from spiel.checkpoint.fingerprint import BASE_SAMPLE_SIZE, base_sample_digest, weight_fingerprint
from spiel.checkpoint.format import CONFIG_NAME
from spiel.model.spiel_model import CheckpointMismatchError, SpielModel
from spiel.testing import tiny_model

MATRIX = "model.layers.1.mlp.down_proj"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("fp") / "ckpt"
    get_spiel_model(tiny_model(), SpielConfig(rank_equiv=2)).save_pretrained(path)
    return path


def with_changed_entries(share: float, seed: int = 0):
    """tiny_model() with ``share`` of MATRIX's entries (random positions) replaced by other entries' values."""
    model = tiny_model()
    weight = model.get_submodule(MATRIX).weight
    g = torch.Generator().manual_seed(seed)
    n = max(1, round(share * weight.numel()))
    positions = torch.randperm(weight.numel(), generator=g)[:n]
    donors = torch.randperm(weight.numel(), generator=g)[:n]
    with torch.no_grad():
        weight.view(-1)[positions] = weight.view(-1)[donors].clone()
    return model


@pytest.mark.parametrize("seed", range(5))
def test_a_base_differing_in_one_percent_of_one_matrix_is_refused(ckpt, seed):
    with pytest.raises(
        CheckpointMismatchError,
        match=rf"differ .* in 1 module\(s\), e\.g\. {MATRIX} \(a hash of "
        rf"{BASE_SAMPLE_SIZE} sampled entries differs\)",
    ):
        SpielModel.from_pretrained(with_changed_entries(0.01, seed), ckpt)


def test_the_same_base_in_bfloat16_or_float16_still_loads(ckpt):
    for dtype in (torch.bfloat16, torch.float16):  # float16 is not hashed (other rounding): correlation only
        SpielModel.from_pretrained(tiny_model().to(dtype), ckpt)


def test_a_checkpoint_without_the_hash_keeps_the_correlation_check(ckpt, tmp_path):
    """Checkpoints written before the hash existed still load (the sampled correlation is their check)."""
    old = tmp_path / "old"
    old.mkdir()
    for f in ckpt.iterdir():
        (old / f.name).write_bytes(f.read_bytes())
    config = json.loads((old / CONFIG_NAME).read_text())
    for entry in config["modules"].values():
        del entry["base_sample_sha256"]
    (old / CONFIG_NAME).write_text(json.dumps(config))
    SpielModel.from_pretrained(tiny_model(), old)


def test_the_digest_costs_well_under_a_millisecond_per_large_matrix():
    layer = torch.nn.Linear(11008, 4096, bias=False)  # LLaMA-7B's largest matrix shape
    base_sample_digest(layer)
    # the correlation sample's last position is the last entry, not one past it (float32 rounding of 2^24+)
    assert weight_fingerprint(layer)[-1] == round(float(layer.weight.view(-1)[-1]), 7)
    start = time.perf_counter()
    for _ in range(10):
        base_sample_digest(layer)
    assert (time.perf_counter() - start) / 10 < 0.05  # generous for a shared 2-core machine


def test_the_fingerprint_samples_evenly_spaced_entries_from_the_first_to_the_last():
    """Each entry of a 12x40 weight holds its own flat position, so the fingerprint reads back the positions:
    the first and last entries, and 32 in between within one of i·479/31."""
    layer = torch.nn.Linear(40, 12, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.arange(480, dtype=torch.float32).view(12, 40))
    positions = weight_fingerprint(layer)
    assert len(positions) == 32 and positions[0] == 0 and positions[-1] == 479
    assert all(p == int(p) and abs(p - i * 479 / 31) < 1 for i, p in enumerate(positions))


def test_load_delta_checks_the_positions_it_keeps(ckpt, monkeypatch):
    """read_checkpoint checks the files; the set load_delta keeps is checked again against this model's
    layers (an API user's reader, or a future form, cannot slip positions past it)."""
    import spiel.model.delta_sets as delta_sets

    read = delta_sets.read_checkpoint

    def out_of_range(*args, **kwargs):
        saved, tensors = read(*args, **kwargs)
        entry = tensors[MATRIX]
        entry["indices"] = entry["indices"].clone()
        entry["indices"][-1] = 10**6
        return saved, tensors

    model = SpielModel.from_pretrained(tiny_model(), ckpt)
    monkeypatch.setattr(delta_sets, "read_checkpoint", out_of_range)
    with pytest.raises(CheckpointMismatchError, match=rf"{MATRIX}\.indices out of range"):
        model.load_delta(ckpt, "b")
    assert model.delta_names == ["default"]


def test_modules_and_shapes_that_differ_are_named_three_at_most(tmp_path):
    """Hand-made headers against a base of five 3x2 linear layers: up to three wrong shapes are all named,
    a fourth adds "..."; modules the base lacks are counted and named (three at most); no fingerprint is
    looked at while names or shapes differ."""
    from spiel.checkpoint.fingerprint import check_against_base

    base = torch.nn.ModuleDict({n: torch.nn.Linear(2, 3) for n in "abcde"})

    def message(modules):
        with pytest.raises(CheckpointMismatchError) as err:
            check_against_base(tmp_path, {"modules": modules, "base_model": {}}, base)
        return str(err.value).removeprefix(f"checkpoint {tmp_path} does not match the base model: ")

    wrong = {n: {"k": 1, "shape": [2, 3]} for n in "abc"}
    assert message(wrong) == (
        "shape mismatch for a: checkpoint [2, 3], base [3, 2]; b: checkpoint [2, 3], base [3, 2]; "
        "c: checkpoint [2, 3], base [3, 2]"
    )
    assert message({**wrong, "d": {"k": 1, "shape": [3, 3]}}).endswith(
        "c: checkpoint [2, 3], base [3, 2] ..."
    )
    assert message({n: {"k": 1, "shape": [3, 2]} for n in ("e", "x", "y", "z", "w")}) == (
        "4 module(s) of the checkpoint are not linear layers of the base model, e.g. ['x', 'y', 'z']"
    )
    assert message({"x": {"k": 1, "shape": [3, 2]}, "a": {"k": 1, "shape": [1, 1]}}) == (
        "1 module(s) of the checkpoint are not linear layers of the base model, e.g. ['x']; "
        "shape mismatch for a: checkpoint [1, 1], base [3, 2]"
    )


def test_a_constant_fingerprint_correlates_zero_and_is_refused(tmp_path):
    """A checkpoint whose 32 sampled base values are all equal has no correlation with any base: 0.00 in the
    message (not nan), and refused."""
    from spiel.checkpoint.fingerprint import FINGERPRINT_MIN_CORRELATION, check_against_base

    base = torch.nn.ModuleDict({"a": torch.nn.Linear(8, 8)})
    saved = {"modules": {"a": {"k": 1, "shape": [8, 8], "fingerprint": [0.5] * 32}}, "base_model": {}}
    with pytest.raises(CheckpointMismatchError) as err:
        check_against_base(tmp_path, saved, base)
    assert f"correlate 0.00 with it (same base: > {FINGERPRINT_MIN_CORRELATION})" in str(err.value)


def test_a_constant_base_correlates_zero_and_is_refused(tmp_path):
    """The other side: a given base whose sampled weights are all equal (a base filled with one value) against a
    checkpoint's varied fingerprint: 0.00 in the message (not nan), and refused."""
    from spiel.checkpoint.fingerprint import FINGERPRINT_MIN_CORRELATION, check_against_base

    base = torch.nn.ModuleDict({"a": torch.nn.Linear(8, 8)})
    torch.nn.init.constant_(base["a"].weight, 0.5)
    varied = torch.linspace(-1, 1, 32).tolist()
    saved = {"modules": {"a": {"k": 1, "shape": [8, 8], "fingerprint": varied}}, "base_model": {}}
    with pytest.raises(CheckpointMismatchError) as err:
        check_against_base(tmp_path, saved, base)
    assert f"correlate 0.00 with it (same base: > {FINGERPRINT_MIN_CORRELATION})" in str(err.value)
