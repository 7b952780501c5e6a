"""Every reader of a SpIEL checkpoint (SpielModel.from_pretrained, compose -- every member --, resume and
spiel-eval) refuses a damaged or malformed one with one message naming the file and the problem."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from spiel import SpielConfig, compose, get_spiel_model
from spiel.checkpoint.format import CONFIG_NAME, DELTA_NAME
from spiel.checkpoint.read import InvalidCheckpointError, sha256_hex
from spiel.model.spiel_model import CheckpointMismatchError, SpielModel
from spiel.testing import tiny_model, tiny_tokenizer

MODULE = "model.layers.0.self_attn.q_proj"
IDS = torch.tensor([[1, 40, 77, 90, 12, 55, 8]])


def make_ckpt(path, seed=1, tokenizer=False):
    model = get_spiel_model(tiny_model(), SpielConfig(rank_equiv=1, seed=seed))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.deltas.values():
            layer.values.copy_(torch.randn(layer.k, generator=g) * 0.05)
    # the flat (training) form, whose tensor checks these tests corrupt; test_compact_checkpoint.py covers
    # the compact form save_pretrained writes by default
    model.save_pretrained(path, tokenizer=tiny_tokenizer() if tokenizer else None, compact=False)
    return Path(path)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return make_ckpt(tmp_path_factory.mktemp("good") / "ckpt", seed=1)


def copy_ckpt(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def config_of(path: Path) -> dict:
    return json.loads((path / CONFIG_NAME).read_text())


def write_config(path: Path, config) -> None:
    (path / CONFIG_NAME).write_text(json.dumps(config))


def rewrite_tensors(path: Path, change) -> None:
    """Change the tensors and record the new file's hash, as a buggy writer would: only the tensor
    checks can catch it."""
    tensors = load_file(str(path / DELTA_NAME))
    change(tensors)
    save_file(tensors, str(path / DELTA_NAME))
    config = config_of(path)
    config["delta_sha256"] = sha256_hex((path / DELTA_NAME).read_bytes())
    write_config(path, config)


def set_value(key, position, value):
    def change(t):
        t[key][position] = value

    return change


def all_nan(t):
    t[f"{MODULE}.values"][:] = float("nan")


def values_of_shape_one(t):
    t[f"{MODULE}.values"] = t[f"{MODULE}.values"][:1].clone()


def indices_2d(t):
    t[f"{MODULE}.indices"] = t[f"{MODULE}.indices"].view(-1, 1).clone()


def swap_two_indices(t):
    idx = t[f"{MODULE}.indices"]
    idx[[3, 4]] = idx[[4, 3]].clone()


def duplicate_index(t):
    t[f"{MODULE}.indices"][4] = t[f"{MODULE}.indices"][3]


def duplicate_then_unsorted(t):
    """Two defects: the message names the first one (position 4), not the last (position 11)."""
    duplicate_index(t)
    idx = t[f"{MODULE}.indices"]
    idx[[10, 11]] = idx[[11, 10]].clone()


def index_past_the_end(t):
    t[f"{MODULE}.indices"][-1] = 2**30  # far past the end of q_proj


def negative_index(t):
    t[f"{MODULE}.indices"][0] = -1


def drop_values(t):
    del t[f"{MODULE}.values"]


def float_indices(t):
    t[f"{MODULE}.indices"] = t[f"{MODULE}.indices"].float()


def extra_tensor(t):
    t[f"{MODULE}.scales"] = torch.ones(3)


def integer_values(t):
    t[f"{MODULE}.values"] = t[f"{MODULE}.values"].round().int()


def float_grown_at(t):
    t[f"{MODULE}.grown_at"] = t[f"{MODULE}.grown_at"].float()


NO_HASH = r"no delta_sha256, so spiel_delta.safetensors cannot be checked for damage"
PAST_BOUND = torch.nextafter(torch.tensor(1e4), torch.tensor(2e4))  # the next float32 after the bound


def as_float64_holding(value):
    def change(t):
        t[f"{MODULE}.values"] = t[f"{MODULE}.values"].double()
        t[f"{MODULE}.values"][0] = value  # finite in float64, inf in float32

    return change


def fp32_values_for_float16_delta(path):
    rewrite_tensors(path, set_value(f"{MODULE}.values", 1, 1e6))  # finite in float32, inf in float16
    config = config_of(path)
    config["spiel_config"]["delta_dtype"] = "float16"
    write_config(path, config)


def drop_fingerprints(path):
    config = config_of(path)
    for entry in config["modules"].values():
        del entry["fingerprint"]
    write_config(path, config)


def truncate(path):
    data = (path / DELTA_NAME).read_bytes()
    (path / DELTA_NAME).write_bytes(data[: len(data) * 2 // 3])


def flip_a_value_bit(path):
    """Flip the lowest mantissa bit of the last stored float: the file still parses and every value is
    finite; only the recorded hash tells."""
    data = bytearray((path / DELTA_NAME).read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    meta = json.loads(data[8:header])
    begin, _ = meta[f"{MODULE}.values"]["data_offsets"]
    data[header + begin] ^= 1
    (path / DELTA_NAME).write_bytes(bytes(data))


def flip_a_header_bit(path):
    data = bytearray((path / DELTA_NAME).read_bytes())
    assert data[8:10] == b'{"'
    data[9] ^= 0x40  # the header's first quote becomes a 'b': not JSON any more
    (path / DELTA_NAME).write_bytes(bytes(data))


def without_hash(corrupt):
    def run(path):
        corrupt(path)
        config = config_of(path)
        del config["delta_sha256"]
        write_config(path, config)

    return run


def tensors(change):
    return lambda path: rewrite_tensors(path, change)


def text_config(text):
    return lambda path: (path / CONFIG_NAME).write_text(text)


def edit_config(change):
    def run(path):
        config = config_of(path)
        change(config)
        write_config(path, config)

    return run


# (case, corruption, what the message must say); every message also names the file.
CASES = [
    (
        "one-nan",
        tensors(set_value(f"{MODULE}.values", 5, float("nan"))),
        r"1 non-finite value.*position 5: nan",
    ),
    ("all-nan", tensors(all_nan), r"non-finite value"),
    ("inf", tensors(set_value(f"{MODULE}.values", 0, float("inf"))), r"non-finite value.*inf"),
    ("values-shape-1", tensors(values_of_shape_one), rf"'{MODULE}.values' has shape \[1\], expected \[\d+\]"),
    ("indices-2d", tensors(indices_2d), rf"'{MODULE}.indices' has shape \[\d+, 1\]"),
    ("unsorted", tensors(swap_two_indices), r"indices' not sorted at position"),
    ("duplicate", tensors(duplicate_index), r"indices' duplicated at position 4"),
    ("unsorted-at-4", tensors(swap_two_indices), r"indices' not sorted at position 4 "),
    ("two-defects", tensors(duplicate_then_unsorted), r"indices' duplicated at position 4 "),
    (
        "past-the-end",
        tensors(index_past_the_end),
        r"indices' out of range: \[\d+, 1073741824\] for a weight of \d+ entries",
    ),
    ("negative", tensors(negative_index), r"indices' out of range: \[-1"),
    ("float-indices", tensors(float_indices), r"indices' must hold integers"),
    ("missing-key", tensors(drop_values), rf"missing tensor '{MODULE}.values'"),
    ("extra-tensor", tensors(extra_tensor), rf"unexpected tensor '{MODULE}.scales'"),
    ("integer-values", tensors(integer_values), r"values' must be floating point"),
    ("float-grown-at", tensors(float_grown_at), r"grown_at' must hold integers"),
    (
        "no-fingerprints",
        drop_fingerprints,
        r"no base-weight fingerprint for \d+ of \d+ module.*pass allow_unverified_base=True",
    ),
    ("truncated", truncate, r"damaged \(truncated or altered\)"),
    ("truncated-no-hash", without_hash(truncate), NO_HASH),
    ("value-bit-flip", flip_a_value_bit, r"damaged \(truncated or altered\)"),
    ("header-bit-flip", flip_a_header_bit, r"damaged \(truncated or altered\)"),
    ("header-bit-flip-no-hash", without_hash(flip_a_header_bit), NO_HASH),
    ("no-hash", without_hash(lambda path: None), NO_HASH),
    ("invalid-json", text_config('{"format_version": 1,'), r"not valid JSON \(.* line 1 column"),
    ("list-json", text_config("[1, 2]"), r"expected a JSON object, got a list"),
    (
        "huge-integer-json",
        text_config('{"format_version": ' + "1" * 5000 + "}"),
        r"spiel_config.json: holds a number Python will not parse",
    ),
    (
        "deep-json",
        text_config('{"x": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        r"spiel_config.json: nested too deeply to parse",
    ),
    (
        "bad-spiel-config",
        edit_config(lambda c: c["spiel_config"].update(method="rigl")),
        r"spiel_config: .*method",
    ),
    ("bad-k", edit_config(lambda c: c["modules"][MODULE].update(k="12")), r"\.k must be an integer"),
    ("bad-shape", edit_config(lambda c: c["modules"][MODULE].update(shape=[64])), r"\.shape must be"),
    (
        "newer-format",
        edit_config(lambda c: c.update(format_version=99)),
        r"checkpoint format 99; .*upgrade spiel",
    ),
    ("no-modules", edit_config(lambda c: c.update(modules={})), r"'modules' must be a non-empty object"),
    ("bad-hash", edit_config(lambda c: c.update(delta_sha256=12)), r"delta_sha256 must be a 64-character"),
    (
        "nan-fingerprint",
        edit_config(lambda c: c["modules"][MODULE]["fingerprint"].__setitem__(0, float("nan"))),
        r"fingerprint must be 32 finite numbers",
    ),
    (
        "null-fingerprint",
        edit_config(lambda c: c["modules"][MODULE].update(fingerprint=None)),
        rf"modules\['{MODULE}'\]\.fingerprint is null",
    ),
    # values are checked in the dtype readers get (delta_dtype), not only in the file's
    (
        "float64-1e300",
        tensors(as_float64_holding(1e300)),
        r"values' are float64 but the checkpoint's delta_dtype is "
        r"float32: casting could overflow",
    ),
    (
        "fp32-into-float16",
        fp32_values_for_float16_delta,
        r"values' are float32 but the checkpoint's delta_dtype is "
        r"float16",
    ),
    (
        "finite-3e38",
        tensors(set_value(f"{MODULE}.values", 2, 3e38)),
        r"1 value\(s\) of \d+ beyond ±10000 \(first at position 2: 3e\+38\)",
    ),
    ("one-past-the-bound", tensors(set_value(f"{MODULE}.values", 3, float(PAST_BOUND))), r"beyond ±10000"),
]


def corrupted(good: Path, tmp_path: Path, corrupt) -> Path:
    path = copy_ckpt(good, tmp_path / "bad")
    corrupt(path)
    return path


def file_named(message: str, path: Path) -> bool:
    return str(path / CONFIG_NAME) in message or str(path / DELTA_NAME) in message


@pytest.mark.parametrize("case, corrupt, message", CASES, ids=[c[0] for c in CASES])
def test_from_pretrained_refuses_a_damaged_checkpoint_naming_file_and_problem(
    good, tmp_path, case, corrupt, message
):
    bad = corrupted(good, tmp_path, corrupt)
    base = tiny_model()
    with pytest.raises(InvalidCheckpointError, match=message) as err:
        SpielModel.from_pretrained(base, bad)
    assert file_named(str(err.value), bad)
    assert "\n" not in str(err.value)
    assert not any(type(m).__name__ == "SparseDeltaLinear" for m in base.modules())  # base left untouched


@pytest.mark.parametrize("case, corrupt, message", CASES, ids=[c[0] for c in CASES])
def test_compose_refuses_a_damaged_member_next_to_a_good_one(good, tmp_path, case, corrupt, message):
    bad = corrupted(good, tmp_path, corrupt)
    with pytest.raises(InvalidCheckpointError, match=message):
        compose([good, bad], tiny_model())
    with pytest.raises(InvalidCheckpointError, match=message):
        compose([bad, good], tiny_model())


@pytest.mark.parametrize("case, corrupt, message", CASES, ids=[c[0] for c in CASES])
def test_resume_refuses_a_damaged_checkpoint(good, tmp_path, case, corrupt, message):
    bad = corrupted(good, tmp_path, corrupt)
    model = get_spiel_model(tiny_model(), SpielConfig(rank_equiv=1, seed=1))
    if case == "no-fingerprints":  # resume offers no override: spiel always writes them
        message = r"no base-weight fingerprint.*so this one was altered"
    with pytest.raises(InvalidCheckpointError, match=message):
        model.restore_delta(bad)


def test_resume_loads_a_good_checkpoint_and_refuses_one_of_another_base(good, tmp_path):
    model = get_spiel_model(tiny_model(), SpielConfig(rank_equiv=1, seed=7))  # other initial indices
    model.restore_delta(good)
    reference = SpielModel.from_pretrained(tiny_model(), good)
    for name, layer in model.deltas.items():
        assert torch.equal(layer.indices, reference.deltas[name].indices)
        assert torch.equal(layer.values, reference.deltas[name].values)
    other = tiny_model()
    with torch.no_grad():
        for p in other.parameters():
            p.copy_(torch.randn_like(p))
    with pytest.raises(CheckpointMismatchError, match="base weights differ"):
        get_spiel_model(other, SpielConfig(rank_equiv=1, seed=1)).restore_delta(good)


def test_the_fingerprint_override_loads_the_same_model(good, tmp_path):
    bad = corrupted(good, tmp_path, drop_fingerprints)
    loaded = SpielModel.from_pretrained(tiny_model(), bad, allow_unverified_base=True)
    reference = SpielModel.from_pretrained(tiny_model(), good)
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, reference(IDS).logits)
    composed = compose([bad], tiny_model(), allow_unverified_base=True)
    with torch.no_grad():
        torch.testing.assert_close(composed(IDS).logits, reference(IDS).logits, rtol=1e-5, atol=1e-5)


def test_the_delta_hash_override_loads_the_same_model_and_still_reads_the_file(good, tmp_path):
    unhashed = corrupted(good, tmp_path / "a", without_hash(lambda path: None))
    loaded = SpielModel.from_pretrained(tiny_model(), unhashed, allow_unverified_delta=True)
    reference = SpielModel.from_pretrained(tiny_model(), good)
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, reference(IDS).logits)
    truncated = corrupted(good, tmp_path / "b", without_hash(truncate))
    with pytest.raises(InvalidCheckpointError, match="not a readable safetensors file"):
        SpielModel.from_pretrained(tiny_model(), truncated, allow_unverified_delta=True)
    with pytest.raises(InvalidCheckpointError, match=NO_HASH):
        compose([unhashed], tiny_model())
    compose([unhashed], tiny_model(), allow_unverified_delta=True)


def test_values_exactly_at_the_bound_load_and_widen_losslessly(good, tmp_path):
    """The bound is inclusive (1e4 loads, the next float32 does not: CASES); bfloat16 values in a float32
    delta are a lossless widening and load as float32."""
    at_bound = corrupted(good, tmp_path / "a", tensors(set_value(f"{MODULE}.values", 0, -1e4)))
    assert float(SpielModel.from_pretrained(tiny_model(), at_bound).deltas[MODULE].values[0]) == -1e4

    def to_bfloat16(t):
        t[f"{MODULE}.values"] = t[f"{MODULE}.values"].bfloat16()

    path = corrupted(good, tmp_path / "b", tensors(to_bfloat16))
    values = SpielModel.from_pretrained(tiny_model(), path).deltas[MODULE].values
    stored = load_file(str(path / DELTA_NAME))[f"{MODULE}.values"]
    assert values.dtype == torch.float32 and torch.equal(values, stored.float())


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.int16, None])
def test_grown_at_of_any_integer_dtype_or_none_at_all_loads(good, tmp_path, dtype):
    def change(t):
        for key in [k for k in t if k.endswith(".grown_at")]:
            if dtype is None:
                del t[key]  # inference-only checkpoints need no ages
            else:
                t[key] = t[key].to(dtype)

    path = corrupted(good, tmp_path, lambda p: rewrite_tensors(p, change))
    loaded = SpielModel.from_pretrained(tiny_model(), path)
    reference = SpielModel.from_pretrained(tiny_model(), good)
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, reference(IDS).logits)


def test_saved_checkpoints_record_the_hash_of_their_delta(good):
    assert config_of(good)["delta_sha256"] == sha256_hex((good / DELTA_NAME).read_bytes())


CLI_CASES = [
    c
    for c in CASES
    if c[0]
    in (
        "one-nan",
        "values-shape-1",
        "duplicate",
        "no-fingerprints",
        "truncated",
        "invalid-json",
        "list-json",
        "missing-key",
    )
]


@pytest.mark.slow
@pytest.mark.parametrize("case, corrupt, message", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_spiel_eval_exits_2_with_one_message_and_no_traceback(good, tmp_path, case, corrupt, message):
    good_dir = make_ckpt(tmp_path / "good", seed=2, tokenizer=True)
    bad = corrupted(good, tmp_path, corrupt)
    for ckpt in (str(bad), f"[{good_dir},{bad}]"):
        out = subprocess.run(
            [
                "spiel-eval",
                f"ckpt={ckpt}",
                "bench=demo",
                "eval.limit=1",
                "eval.device=cpu",
                "model=tiny",
                f"hydra.run.dir={tmp_path / 'run'}",
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=dict(os.environ, HYDRA_FULL_ERROR="0"),
            timeout=300,
        )
        assert out.returncode == 2, out.stderr[-2000:]
        assert "Traceback" not in out.stderr + out.stdout
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("spiel-eval: InvalidCheckpointError: "), lines
        assert file_named(lines[0], bad)
        if case == "no-fingerprints":  # spiel-eval names its own override
            message = message.replace("allow_unverified_base=True", "eval.allow_unverified_base=true")
        assert re.search(message, lines[0])
    if case == "no-fingerprints":
        out = subprocess.run(
            [
                "spiel-eval",
                f"ckpt={bad}",
                "bench=demo",
                "eval.limit=1",
                "eval.device=cpu",
                "model=tiny",
                "eval.allow_unverified_base=true",
                "eval.progress=false",
                f"hydra.run.dir={tmp_path / 'run2'}",
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-2000:]


def test_load_delta_tensors_refuses_values_that_would_broadcast():
    """The public `load_delta_tensors` (given tensors by an API user, not read from disk) checks too."""
    model = get_spiel_model(tiny_model(), SpielConfig(rank_equiv=1))
    tensors = {
        n: {"indices": layer.indices.clone(), "values": torch.zeros(1), "grown_at": layer.grown_at.clone()}
        for n, layer in model.deltas.items()
    }
    with pytest.raises(CheckpointMismatchError, match=r"values \[1\], expected \[\d+\]"):
        model.load_delta_tensors(tensors, "given tensors")


def test_spiel_eval_checks_every_checkpoint_before_loading_the_base(good, tmp_path, monkeypatch):
    import spiel.eval.loader as loader

    def no_base(*args, **kwargs):
        pytest.fail("the base model was loaded before the checkpoints were checked")

    monkeypatch.setattr(loader, "load_base_model", no_base)
    bad = corrupted(good, tmp_path, tensors(set_value(f"{MODULE}.values", 5, float("nan"))))
    for ckpt in ([str(bad)], [str(good), str(bad)]):
        with pytest.raises(InvalidCheckpointError, match="non-finite"):
            loader.load_for_eval(ckpt, device="cpu")
    unverified = corrupted(good, tmp_path / "u", drop_fingerprints)
    with pytest.raises(InvalidCheckpointError, match=r"pass eval\.allow_unverified_base=true$"):
        loader.load_for_eval([str(unverified)], device="cpu")
    unhashed = corrupted(good, tmp_path / "h", without_hash(lambda path: None))
    with pytest.raises(InvalidCheckpointError, match=r"pass eval\.allow_unverified_delta=true$"):
        loader.load_for_eval([str(unhashed)], device="cpu")


# -- the header's checks at their limits, on a hand-written header (spiel.checkpoint.format) ---------------
def header(**module):
    entry = {"k": 6, "shape": [2, 3], "fingerprint": [0.5] * 32, "base_sample_sha256": "a" * 64, **module}
    return {"format_version": 3, "spiel_config": SpielConfig().to_dict(), "modules": {"m": entry}}


@pytest.mark.parametrize(
    "change, problem",
    [
        ({}, None),
        ({"k": 1}, None),
        ({"k": 7}, "modules['m'].k must be an integer in [1, 6], got 7"),
        ({"k": 0}, "modules['m'].k must be an integer in [1, 6], got 0"),
        ({"k": True}, "modules['m'].k must be an integer in [1, 6], got True"),
        ({"k": 2.0}, "modules['m'].k must be an integer in [1, 6], got 2.0"),
        (
            {"shape": [-2, -3]},
            "modules['m'].shape must be [out_features, in_features] (positive integers), got [-2, -3]",
        ),
        (
            {"shape": [2, 0]},
            "modules['m'].shape must be [out_features, in_features] (positive integers), got [2, 0]",
        ),
        (
            {"shape": [2, 3, 1]},
            "modules['m'].shape must be [out_features, in_features] (positive integers), got [2, 3, 1]",
        ),
        ({"fingerprint": [0.5] * 31}, "modules['m'].fingerprint must be 32 finite numbers"),
        ({"fingerprint": [0.5] * 33}, "modules['m'].fingerprint must be 32 finite numbers"),
        ({"fingerprint": [0.5] * 31 + [True]}, "modules['m'].fingerprint must be 32 finite numbers"),
        ({"fingerprint": [0.5] * 31 + [math.inf]}, "modules['m'].fingerprint must be 32 finite numbers"),
        ({"fingerprint": [1] * 32}, None),
        (
            {"base_sample_sha256": "a" * 63},
            "modules['m'].base_sample_sha256 must be a 64-character hex digest, got '" + "a" * 63 + "'",
        ),
        (
            {"base_sample_sha256": "a" * 65},
            "modules['m'].base_sample_sha256 must be a 64-character hex digest, got '" + "a" * 65 + "'",
        ),
    ],
)
def test_module_entries_at_their_limits(change, problem):
    from spiel.checkpoint.format import CheckpointHeader

    if problem is None:
        CheckpointHeader.check(header(**change), ValueError)
    else:
        with pytest.raises(ValueError) as err:
            CheckpointHeader.check(header(**change), ValueError)
        assert str(err.value) == problem


def test_header_fields_at_their_limits():
    from spiel.checkpoint.format import FORMAT_VERSION, CheckpointHeader

    def problem(data):
        try:
            CheckpointHeader.check(data, ValueError)
        except ValueError as e:
            return str(e)
        return None

    assert problem({**header(), "format_version": FORMAT_VERSION}) is None
    assert problem({k: v for k, v in header().items() if k != "format_version"}) is None  # 0: the first ones
    assert problem({**header(), "format_version": FORMAT_VERSION + 1}) == (
        f"checkpoint format {FORMAT_VERSION + 1}; this spiel reads up to {FORMAT_VERSION}: upgrade spiel"
    )
    assert problem({**header(), "format_version": "3"}) == "format_version must be an integer, got '3'"
    assert problem({**header(), "delta_sha256": "f" * 64}) is None
    assert problem({**header(), "delta_sha256": "f" * 63}).startswith("delta_sha256 must be a 64-character")
    assert problem({**header(), "modules": {}}).startswith("'modules' must be a non-empty object")
    assert problem({**header(), "base_model": 3}) == "base_model must be an object, got 3"
    assert problem({**header(), "base_model": "org/name"}) is None
    assert problem([]) == "expected a JSON object, got a list"
    assert problem({**header(), "spiel_config": None}) == "no 'spiel_config' object"
    null = header()
    null["modules"]["m"]["base_sample_sha256"] = None
    assert problem(null).startswith("modules['m'].base_sample_sha256 is null")
