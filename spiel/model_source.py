"""Where a base model comes from, checked before anything loads (no torch import).

    check_model_source("tiny")                     # the shipped tiny model (an alias)
    check_model_source("smollm2-135m")             # a model from the package registry (spiel.io.packaged_model)
    check_model_source("/data/llama-2-7b")         # a local directory with a config.json
    check_model_source("meta-llama/Llama-2-7b-hf") # a hub id: in the local cache, or downloadable

A message names the key (``model.name_or_path``), what was looked for, and how to get it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from spiel.io.packaged_model import PackagedModelError, is_packaged, packaged_model_dir
from spiel.paths import ASSETS_DIR, REPO_ROOT  # noqa: F401 (re-exported)

MODEL_ALIASES = {"tiny": ASSETS_DIR / "tiny-llama"}
KEY = "model.name_or_path"
# huggingface_hub's rule for repo ids: [namespace/]name, letters, digits, "-", "_", ".", at most 96 chars
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.\-]*/)?[A-Za-z0-9][\w.\-]*$")
HOW = ("choose model=tiny|smollm2-135m|llama2-7b|llama2-13b, or set model.name_or_path=<a local model directory (with "
       "config.json)> or <a Hugging Face hub id such as meta-llama/Llama-2-7b-hf>")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_model_source(name_or_path, revision: str | None = None) -> None:
    """Raise ValueError("model.name_or_path: ...") unless the model can be found."""
    if not name_or_path:
        raise ValueError(f"{KEY}: no base model: {HOW}")
    name = str(name_or_path)
    if is_packaged(name):
        try:  # fetched and converted on first use, verified on every first use in a process
            packaged_model_dir(name)
        except PackagedModelError as e:
            raise ValueError(f"{KEY}: {e}") from None
        return
    if name in MODEL_ALIASES:
        path = MODEL_ALIASES[name]
        if not (path / "config.json").is_file():
            raise ValueError(f"{KEY}: the alias {name!r} is the model in {path}, which is missing: it ships with "
                             "the git checkout (not with a wheel); recreate it with scripts/make_tiny_model.py")
        return
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{KEY}: {path} is a directory without a config.json, so not a transformers model "
                             "directory (save one with model.save_pretrained(dir))")
        return
    if path.exists():
        raise ValueError(f"{KEY}: {path} is a file; a model is a directory with config.json and weights")
    looks_like_path = name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1
    if looks_like_path or len(name) > 96 or not _HUB_ID.match(name):
        raise ValueError(f"{KEY}: no model directory at {path.absolute()} (and {name!r} is not a hub id); {HOW}")
    if _offline():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json", revision=revision)
        if not isinstance(cached, str):
            raise ValueError(
                f"{KEY}: {name!r} is neither a local directory nor in the Hugging Face cache, and HF_HUB_OFFLINE "
                f"is set, so it cannot be downloaded. Download it where there is internet (`hf download {name}`, "
                f"then copy the cache or the directory here) and set {KEY} to its directory, or {HOW}")
