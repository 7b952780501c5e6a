"""spiel-export: a trained checkpoint as a merged, plain transformers model directory for serving.

    spiel-export ckpt=outputs/train/default/final out=exported/demo
    spiel-export ckpt=[runs/tulu2_ag/final,runs/alpaca_ag/final] out=exported/tulu_alpaca dtype=bfloat16

`ckpt` is anything spiel-eval accepts (a SpIEL checkpoint, a list of them summed, or weighted with
`ckpt_weights=[...]`, a peft adapter, a full model directory). The base is loaded in float32, the delta merged
into it there (one rounding, at the cast to `dtype`), and the result written with `save_pretrained` next to a
tokenizer that carries the chat template training used: the one in the checkpoint's own tokenizer (spiel-train
writes the template it trained with there: the Tülu one, or the model's own with data.template=model), else
the Tülu template (checked token for token, `spiel.data.chat_template`). Merging into a 4-bit (NF4) base is
refused: it would requantize the weights.

Nothing but the export's own files is ever deleted: the model is written into a fresh, uniquely named
directory beside `out` and renamed to `out` at the end; with overwrite=true the old `out` is first
renamed aside, then the new one moved in, and only then is the old one deleted, so a kill at any moment
leaves `out` either the old export or the new one, whole. An `out` that is, contains or lies inside
an input (a checkpoint, the base model) is refused.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from spiel.dtypes import DTYPES
from spiel.paths import CONFIG_DIR

log = logging.getLogger("spiel.cli.export")

NF4_ADVICE = (
    "merging into a 4-bit base would requantize the merged weights (lossy), so spiel-export only writes "
    "full-precision models. Export with quant=none: the delta is merged into the full-precision base "
    "weights ({base}; a delta trained on an NF4 base then runs on the unquantized weights, as a merged "
    "QLoRA adapter does). To serve on the 4-bit base without merging, keep the checkpoint and load it with "
    "SpielModel.from_pretrained (spiel-eval ... quant=nf4 does this)."
)


class ExportError(ValueError):
    """A spiel-export setting or input that cannot give a correct export (with what to do)."""


def _check_settings(ckpts: list[str], out, dtype: str, quant: str, overwrite: bool) -> Path:
    if not ckpts:
        raise ExportError("ckpt: nothing to export; pass ckpt=<checkpoint dir> (or a [list] to sum deltas)")
    if not out:
        raise ExportError("out: where to write the model directory, e.g. out=exported/my-model")
    if dtype not in DTYPES:
        raise ExportError(f"dtype: must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if quant != "none":
        raise ExportError(f"quant={quant}: " + NF4_ADVICE.format(base="the same base, not quantized"))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"out={out} is a file; out= is the directory to write the model into")
    if out.exists() and not overwrite and any(out.iterdir()):
        raise ExportError(f"out={out} exists and is not empty; choose another out= or pass overwrite=true")
    return out


def _check_out_apart(out: Path, inputs: dict[str, str]) -> None:
    """Refuse an ``out`` that is, contains or lies inside an input (``{what: path}``): writing it would
    replace or delete what is being exported (``ckpt=RUN/final out=RUN`` would delete the whole run)."""
    target = out.resolve()
    for what, path in inputs.items():
        source = Path(path).resolve()
        relation = (
            "is"
            if target == source
            else "contains"
            if target in source.parents
            else "lies inside"
            if source in target.parents
            else None
        )
        if relation:
            raise ExportError(
                f"out={out} {relation} the input {what} ({path}): writing there would replace or "
                "delete what is being exported; choose an out= outside every input"
            )


def _local_inputs(ckpts: list[str], model_name: str | None, info: dict | None = None) -> dict[str, str]:
    """The inputs of an export that are directories on this machine: checkpoints (Hub ones as their
    snapshot once loaded), the base model."""
    from spiel.io.base_model import resolve_model_path

    found = {f"ckpt={c}": c for c in ckpts if Path(c).is_dir()}
    for c, d in zip(ckpts, (info or {}).get("ckpt_dirs") or [], strict=False):
        found.setdefault(f"ckpt={c}", d)
    for base in (model_name, (info or {}).get("base")):
        if base:
            path = Path(resolve_model_path(base))
            if path.is_dir():
                found[f"base model {base}"] = str(path)
    return found


def _write_error(error: OSError, path: Path) -> ExportError:
    from spiel.training.engine.failures import describe_os_error

    return ExportError(describe_os_error(error, path, "cannot write the export to"))


def _write(out: Path, save) -> None:
    """``save(directory)`` into a fresh directory beside ``out``, then swapped in (see the module docstring)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    except OSError as e:
        raise _write_error(e, out) from None
    try:
        save(staging)
        aside = None
        if out.exists():  # an empty directory, or overwrite=true (checked before loading)
            aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.replaced-", dir=out.parent))
            os.rename(out, aside)  # onto the empty directory just made: atomic
        try:
            os.rename(staging, out)
        except BaseException:
            if aside is not None:
                os.rename(aside, out)  # put the old export back
            raise
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise _write_error(e, out) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if aside is not None:
        shutil.rmtree(aside)


def _check_base_not_4bit(model_name: str | None, ckpts: list[str]) -> None:
    """Refuse a base stored quantized, reading only its config (before any weights load)."""
    from spiel.checkpoint.kind import checkpoint_kind
    from spiel.eval.loader import recorded_base
    from spiel.io.base_model import resolve_model_path

    base = model_name
    if base is None and Path(ckpts[0]).is_dir():
        kind = checkpoint_kind(ckpts[0])
        base = ckpts[0] if kind == "full" else recorded_base(ckpts[0], kind)
    if base is None:
        return  # the loader reports a missing base with its own message
    config = Path(resolve_model_path(base)) / "config.json"
    if not config.is_file():
        return  # a hub id: the loaded model is checked instead (_check_loaded)
    quant = json.loads(config.read_text()).get("quantization_config")
    if quant:
        raise ExportError(
            f"the base model {base} is stored quantized ({quant.get('quant_method', '?')}): "
            + NF4_ADVICE.format(
                base=f"point model.name_or_path at the full-precision weights {base} was quantized from"
            )
        )


def _check_loaded(model) -> None:
    from spiel.delta.layer import SparseDeltaLinear
    from spiel.delta.weights import is_quantized

    quantized = [n for n, p in model.named_parameters() if is_quantized(p)]
    if quantized:
        raise ExportError(
            f"the loaded base holds 4-bit weights ({quantized[0]}, ...): "
            + NF4_ADVICE.format(base="point model.name_or_path at full-precision weights")
        )
    unmerged = [n for n, m in model.named_modules() if isinstance(m, SparseDeltaLinear)]
    if unmerged:  # pragma: no cover - load_for_eval merges every full-precision delta
        raise RuntimeError(f"internal error: the delta of {unmerged[0]} was not merged")


def trained_template(tokenizer, info: dict, ckpts: list[str]) -> str | None:
    """ "tulu" or "model" when the tokenizer came with the checkpoint and carries a chat template (the one
    spiel-train trained with); None when the Tülu template is to be attached."""
    from spiel.data.template import jinja_chat_template

    from_checkpoint = info.get("kind") == "full" or info.get("tokenizer") in ckpts
    if not from_checkpoint or not getattr(tokenizer, "chat_template", None):
        return None
    return (
        "tulu"
        if tokenizer.chat_template in (jinja_chat_template(True), jinja_chat_template(False))
        else "model"
    )


def export(
    ckpt,
    out,
    model_name: str | None = None,
    dtype: str = "bfloat16",
    quant: str = "none",
    device: str = "cpu",
    revision: str | None = None,
    overwrite: bool = False,
    ckpt_weights=None,
) -> Path:
    """Write the merged model of `ckpt` and its chat-template tokenizer to `out`; returns `out`."""
    import torch

    import spiel
    from spiel.data.chat_template import attach_chat_template
    from spiel.eval.loader import load_for_eval, normalize_ckpts

    ckpts = normalize_ckpts(ckpt)
    out = _check_settings(ckpts, out, str(dtype), str(quant), overwrite)
    _check_out_apart(out, _local_inputs(ckpts, model_name))
    _check_base_not_4bit(model_name, ckpts)
    loaded = load_for_eval(
        ckpts,
        model_name=model_name,
        dtype="float32",
        quant="none",
        device=device,
        revision=revision,
        ckpt_weights=ckpt_weights,
    )
    _check_out_apart(out, _local_inputs(ckpts, model_name, loaded.info))  # Hub snapshots, the recorded base
    model, tokenizer = loaded.model, loaded.tokenizer
    _check_loaded(model)
    template = trained_template(tokenizer, loaded.info, ckpts)
    if template != "model":  # the Tülu template, set afresh and checked token for token
        attach_chat_template(tokenizer)
        template = "tulu"
    model = model.to(getattr(torch, dtype))
    model.config.dtype = getattr(torch, dtype)
    info = {
        "ckpt": ckpts,
        "base": loaded.info.get("base"),
        "kind": loaded.info.get("kind"),
        "dtype": dtype,
        "ckpt_weights": loaded.info.get("ckpt_weights"),
        "spiel_version": spiel.__version__,
        "chat_template": template,
    }

    def save(directory: Path) -> None:
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        (directory / "spiel_export.json").write_text(json.dumps(info, indent=1) + "\n")

    _write(out, save)
    log.info("exported %s to %s (%s)", " + ".join(ckpts), out, dtype)
    return out


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
def main(cfg: DictConfig):
    from spiel.checkpoint.kind import CheckpointError
    from spiel.data.chat_template import ChatTemplateError
    from spiel.io.model_source import RemoteCodeError, RevisionError
    from spiel.model.spiel_model import CheckpointMismatchError, InvalidCheckpointError

    ckpt = OmegaConf.to_container(cfg.ckpt) if OmegaConf.is_list(cfg.ckpt) else cfg.ckpt
    weights = cfg.get("ckpt_weights")
    weights = OmegaConf.to_container(weights) if OmegaConf.is_list(weights) else weights
    try:
        out = export(
            ckpt,
            cfg.out,
            model_name=cfg.model.name_or_path,
            dtype=cfg.dtype,
            quant=cfg.quant.name,
            device=cfg.device,
            revision=cfg.model.get("revision"),
            overwrite=cfg.overwrite,
            ckpt_weights=weights,
        )
    except (
        ExportError,
        CheckpointError,
        CheckpointMismatchError,
        InvalidCheckpointError,
        ChatTemplateError,
        FileNotFoundError,
        RemoteCodeError,
        RevisionError,
    ) as e:
        print(f"spiel-export: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    print(
        f"exported: {out} (load with AutoModelForCausalLM.from_pretrained / AutoTokenizer.from_pretrained)",
        flush=True,
    )


if __name__ == "__main__":
    main()
