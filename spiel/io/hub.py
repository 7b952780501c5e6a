"""SpIEL checkpoints on the Hugging Face Hub: resolving a repo id to a local directory, and pushing one.

    path = resolve_checkpoint("org/name", revision="v1")     # a local directory wins when it exists
    push_checkpoint("out/final", "org/name")                 # the delta checkpoint + a generated model card

Repo ids go through ``huggingface_hub.snapshot_download``, so the local Hub cache, ``HF_HUB_CACHE`` /
``HF_HOME``, ``HF_HUB_OFFLINE=1`` and tokens work as they do for transformers. Pushing uploads exactly
the checkpoint directory (``spiel_config.json``, ``spiel_delta.safetensors``, tokenizer files) and a
``README.md`` model card; the base model is never uploaded.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from spiel.checkpoint.format import CONFIG_NAME, DELTA_NAME
from spiel.checkpoint.kind import TOKENIZER_FILES
from spiel.checkpoint.read import read_spiel_config

CARD_NAME = "README.md"
# A run directory written by spiel-train holds these next to its final/ checkpoint.
RUN_SUMMARY = "summary.json"
RUN_CONFIG = "config.yaml"


def resolve_checkpoint(name_or_path, revision: str | None = None) -> Path:
    """The local directory for ``name_or_path``: itself when it is a directory, else the snapshot of
    the Hub repo it names (downloaded, or read from the local cache when offline)."""
    path = Path(str(name_or_path))
    if path.is_dir():
        if revision is not None:
            raise ValueError(
                f"revision={revision!r} was given, but {name_or_path} is a local directory "
                "(revisions apply to Hub repo ids)"
            )
        return path
    if path.exists():
        raise FileNotFoundError(f"{name_or_path} is a file, not a checkpoint directory")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    from spiel.io.model_source import check_revision

    check_revision(revision, f"{name_or_path}@revision")
    repo_id = str(name_or_path)
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise FileNotFoundError(f"{name_or_path}: no such directory (and not a Hub repo id)") from None
    try:
        return Path(snapshot_download(repo_id, revision=revision))
    except Exception as e:  # huggingface_hub's many error types, network errors, a bad revision
        where = (
            f"HF_HUB_OFFLINE=1 and it is not in the local Hub cache {constants.HF_HUB_CACHE}"
            if constants.HF_HUB_OFFLINE
            else "the Hub answered"
        )
        at = f" at revision {revision!r}" if revision else ""
        raise FileNotFoundError(
            f"{name_or_path}: no such local directory, and not loadable as the Hub repo "
            f"{repo_id!r}{at} ({where}: {type(e).__name__}: {str(e).splitlines()[0]})"
        ) from e


def cached_commit(repo_id: str, revision: str | None = None) -> str | None:
    """The commit a Hub model loaded as ``repo_id`` at ``revision`` came from (read from the local Hub
    cache, where loading put it); None for a local directory or when unknown."""
    from spiel.io.model_source import RevisionError, check_revision

    if Path(str(repo_id)).exists():
        return None
    try:
        check_revision(revision)
    except RevisionError:
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(str(repo_id), "config.json", revision=revision)
    except Exception:  # not a repo id, or an unusual cache: the revision is then just not recorded
        return None
    return Path(found).parent.name if isinstance(found, str) else None


def split_revision(text: str) -> tuple[str, str | None]:
    """``"org/name@rev"`` -> ``("org/name", "rev")`` (spiel-eval's ``ckpt=`` syntax); an existing local
    path is never split."""
    text = str(text)
    if "@" in text and not Path(text).exists():
        name, _, revision = text.rpartition("@")
        return name, revision or None
    return text, None


def _run_info(directory: Path) -> dict:
    """Data name and metrics of the spiel-train run whose final checkpoint ``directory`` is, if any."""
    info: dict = {}
    run_dir = directory.parent
    summary_path, config_path = run_dir / RUN_SUMMARY, run_dir / RUN_CONFIG
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if Path(str(summary.get("final_checkpoint", ""))).resolve() == directory.resolve():
            info["metrics"] = {
                k: summary[k]
                for k in ("steps", "final_loss", "train_loss", "examples")
                if summary.get(k) is not None
            }
            if config_path.is_file():
                import yaml

                data = (yaml.safe_load(config_path.read_text()) or {}).get("data") or {}
                if data.get("name"):
                    info["data"] = data["name"]
    return info


def model_card(saved: dict, repo_id: str, data: str | None = None, metrics: dict | None = None) -> str:
    """A model card for a SpIEL checkpoint (``saved``: its ``spiel_config.json``), built with
    huggingface_hub's ``ModelCard`` / ``ModelCardData``."""
    from huggingface_hub import ModelCard, ModelCardData

    base = saved.get("base_model") or {}
    base_id = str(base.get("name_or_path") or "unknown")
    revision = base.get("revision")
    shown = " ".join(base_id.split())  # in the text and table: one line
    cfg = saved.get("spiel_config") or {}
    modules = saved.get("modules") or {}
    entries = sum(int(m["k"]) for m in modules.values())
    dense = sum(int(m["shape"][0]) * int(m["shape"][1]) for m in modules.values())
    method = {
        "ag": "SpIEL-AG (accumulated-gradient growth)",
        "ma": "SpIEL-MA (momentum-approximation growth)",
    }
    rows = [
        ("base model", f"`{shown}`" + (f" at revision `{revision}`" if revision else "")),
        ("method", method.get(cfg.get("method"), str(cfg.get("method")))),
        (
            "budget",
            f"{entries:,} tuned entries in {len(modules)} matrices "
            f"({100 * entries / max(1, dense):.3f}% of their {dense:,} weights)",
        ),
        (
            "schedule",
            f"reselect every {cfg.get('reselection_steps')} steps ({cfg.get('schedule')} decay from "
            f"{cfg.get('initial_rate')}), {cfg.get('estimation_steps')} estimation steps, "
            f"drop by {cfg.get('drop')}",
        ),
        ("data", f"`{data}`" if data else "not recorded"),
    ]
    for key, value in (metrics or {}).items():
        rows.append((key, f"{value:.4g}" if isinstance(value, float) else str(value)))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    base_line = repr(base_id) + (f", revision={revision!r}" if revision else "")
    # the metadata goes through huggingface_hub's YAML writer: a base_model name holding a newline or
    # "---" stays one quoted value instead of adding keys to the card
    card_data = ModelCardData(library_name="spiel", tags=["spiel", "sparse-fine-tuning"])
    if base_id != "unknown" and not Path(base_id).is_absolute():  # a Hub id, not a path on the trainer's disk
        card_data.base_model = base_id
    return str(
        ModelCard(
            f"---\n{card_data.to_yaml()}\n---\n"
            + f"""
# {repo_id.split("/")[-1]}

A sparse fine-tuning delta (SpIEL, "Scaling Sparse Fine-Tuning to Large Language Models", Ansell et al.
2024) for `{shown}`, made with spiel. It holds only the tuned
entries (`{DELTA_NAME}`: indices and values per weight matrix) and `{CONFIG_NAME}`; the base model is
loaded separately and checked against the recorded fingerprint.

| | |
|---|---|
{table}

## Use

```python
from transformers import AutoTokenizer
from spiel import SpielModel
from spiel.io.base_model import load_base_model

base = load_base_model({base_line})   # AutoModelForCausalLM in eval mode (or load it your way)
model = SpielModel.from_pretrained(base, "{repo_id}")
plain = model.merge_and_unload()          # or keep `model` (deltas applied on the fly)
tokenizer = AutoTokenizer.from_pretrained("{repo_id}")
```

or evaluate it: `spiel-eval ckpt={repo_id} bench=mmlu`.
"""
        )
    )


def push_checkpoint(
    directory,
    repo_id: str,
    *,
    private: bool | None = None,
    token=None,
    revision: str | None = None,
    commit_message: str | None = None,
    data: str | None = None,
    metrics: dict | None = None,
):
    """Upload the SpIEL checkpoint in ``directory`` and a generated model card to ``repo_id``.

    ``data`` / ``metrics`` go into the card; for the ``final/`` checkpoint of a spiel-train run they
    default to the run's data config and summary. Returns huggingface_hub's commit info."""
    from huggingface_hub import HfApi

    directory = Path(directory)
    saved = read_spiel_config(directory)  # refuses anything that is not a complete checkpoint
    if not (directory / DELTA_NAME).is_file():
        raise FileNotFoundError(f"{directory} is not a complete SpIEL checkpoint: no {DELTA_NAME}")
    run = _run_info(directory)
    card = model_card(
        saved,
        repo_id,
        data=data or run.get("data"),
        metrics=metrics if metrics is not None else run.get("metrics"),
    )
    with tempfile.TemporaryDirectory(prefix="spiel-push-") as tmp:
        folder = Path(tmp)
        # the delta and the tokenizer's files; anything else there (a run's completion marker, a Trainer
        # checkpoint's optimizer state) is not uploaded
        for name in (CONFIG_NAME, DELTA_NAME, *TOKENIZER_FILES):
            if (directory / name).is_file():
                shutil.copy2(directory / name, folder / name)
        (folder / CARD_NAME).write_text(card)
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            revision=revision,
            commit_message=commit_message or "Upload SpIEL delta",
        )
