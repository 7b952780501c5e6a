"""Where a base model comes from, checked before anything loads (no torch import).

    check_model_source("tiny")                     # the shipped tiny model (an alias)
    check_model_source("smollm2-135m")             # a model from the package registry (spiel.io.packaged_model)
    check_model_source("/data/llama-2-7b")         # a local directory with a config.json
    check_model_source("meta-llama/Llama-2-7b-hf") # a hub id: in the local cache, or downloadable

A message names the key (``model.name_or_path``), what was looked for, and how to get it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from spiel.io.packaged_model import PackagedModelError, is_packaged, packaged_model_dir
from spiel.paths import ASSETS_DIR, REPO_ROOT  # noqa: F401 (re-exported)

MODEL_ALIASES = {"tiny": ASSETS_DIR / "tiny-llama"}
KEY = "model.name_or_path"
# huggingface_hub's rule for repo ids: [namespace/]name, letters, digits, "-", "_", ".", at most 96 chars
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.\-]*/)?[A-Za-z0-9][\w.\-]*$")
# the files whose `auto_map` makes transformers import Python shipped with a model or tokenizer
REMOTE_CODE_FILES = ("config.json", "tokenizer_config.json")
# a Hub revision is a commit hash or a git ref name (a branch or tag, refs/pr/N); huggingface_hub reads
# refs/<revision> from its cache, so a path ("../../x") would make it read, and load, outside the cache
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_REF_CHARS = re.compile(r"^[A-Za-z0-9._+\-/]+$")
HOW = (
    "choose model=tiny|smollm2-135m|llama2-7b|llama2-13b, or your own model with model=hf model.name_or_path=<a local "
    "model directory (with config.json)> or <a Hugging Face hub id such as meta-llama/Llama-2-7b-hf>"
)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_model_source(name_or_path, revision: str | None = None) -> None:
    """Raise ValueError("model.name_or_path: ...") unless the model can be found."""
    if not name_or_path:
        raise ValueError(f"{KEY}: no base model: {HOW}")
    check_revision(revision, "model.revision")
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
            raise ValueError(
                f"{KEY}: the alias {name!r} is the model in {path}, which is missing: it ships with "
                "the git checkout (not with a wheel); recreate it with scripts/make_tiny_model.py"
            )
        return
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(
                f"{KEY}: {path} is a directory without a config.json, so not a transformers model "
                "directory (save one with model.save_pretrained(dir))"
            )
        return
    if path.exists():
        raise ValueError(f"{KEY}: {path} is a file; a model is a directory with config.json and weights")
    looks_like_path = name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1
    if looks_like_path or len(name) > 96 or not _HUB_ID.match(name):
        raise ValueError(
            f"{KEY}: no model directory at {path.absolute()} (and {name!r} is not a hub id); {HOW}"
        )
    if _offline():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json", revision=revision)
        if not isinstance(cached, str):
            raise ValueError(
                f"{KEY}: {name!r} is neither a local directory nor in the Hugging Face cache, and HF_HUB_OFFLINE "
                f"is set, so it cannot be downloaded. Download it where there is internet (`hf download {name}`, "
                f"then copy the cache or the directory here) and set {KEY} to its directory, or {HOW}"
            )


class RevisionError(ValueError):
    """A revision that is neither a commit hash nor a valid git ref name."""


def check_revision(revision, key: str = "revision") -> str | None:
    """``revision`` itself when it is None, a 40-hex commit hash or a git ref name (``git check-ref-format``
    rules, ASCII letters, digits and ``._+-/`` only); RevisionError naming ``key`` otherwise."""
    if revision is None:
        return None
    text = str(revision)
    parts = text.split("/")
    ref = (
        bool(_REF_CHARS.match(text))
        and not text.startswith("-")
        and ".." not in text
        and not text.endswith((".", ".lock"))
        and all(p and not p.startswith(".") for p in parts)
    )
    if not (_COMMIT.match(text) or ref):
        raise RevisionError(
            f"{key}={text!r} is not a commit hash (40 hex digits) or a valid branch/tag name "
            "(letters, digits, '._+-/'; no '..', no part starting with '.', no leading or "
            "trailing '/')"
        )
    return text


class RemoteCodeError(ValueError):
    """A model or checkpoint that would need its own Python code (an ``auto_map``) to load."""


def _model_path(name_or_path) -> str:
    name = str(name_or_path)
    return str(MODEL_ALIASES[name]) if name in MODEL_ALIASES else name


def _model_file(path: str, name: str, revision: str | None) -> Path | None:
    """``name`` of a local model directory, or of a Hub repo (cached, or fetched as transformers would)."""
    if Path(path).is_dir():
        found = Path(path) / name
        return found if found.is_file() else None
    from transformers.utils import cached_file

    try:
        found = cached_file(
            path,
            name,
            revision=revision,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    except (OSError, ValueError):  # not a repo id, or not reachable: loading reports it with its own message
        return None
    return Path(found) if found else None


def refuse_remote_code(name_or_path, revision: str | None = None) -> None:
    """RemoteCodeError when the model's config or tokenizer config asks for code of its own (``auto_map``)."""
    path = _model_path(name_or_path)
    check_revision(revision)
    for name in REMOTE_CODE_FILES:
        file = _model_file(path, name, revision)
        if file is None:
            continue
        try:
            with open(file, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):  # an unreadable config: transformers' loader reports it
            continue
        auto_map = data.get("auto_map") if isinstance(data, dict) else None
        if auto_map:
            classes = ", ".join(sorted(auto_map)) if isinstance(auto_map, dict) else str(auto_map)
            raise RemoteCodeError(
                f"{name_or_path}: {name} has an auto_map ({classes}), so loading it would run Python code that "
                "came with it; spiel never runs such code (trust_remote_code=False). Use a model whose classes "
                "transformers ships (e.g. LLaMA), or remove auto_map from that file after reviewing the code."
            )
