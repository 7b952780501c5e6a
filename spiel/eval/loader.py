"""What `ckpt=` may be, and loading it for evaluation.

- a SpIEL checkpoint (`spiel_config.json` + `spiel_delta.safetensors`): the base model it records (or
  `model=`), checked against it as `SpielModel.from_pretrained` checks, the delta merged in (kept unmerged
  on an NF4 base: merging would requantize; an NF4 base's embeddings, norms and head run in float32);
- a list of SpIEL checkpoints: `spiel.model.spiel_model.compose`, the base plus the SUM of the deltas (the paper's
  "Tülu v2 ⊕ GPT4-Alpaca"), or with `ckpt_weights` (one number per checkpoint) the weighted sum;
- a peft adapter (`adapter_config.json`): its `base_model_name_or_path` (or `model=`), merged unless NF4;
- a full transformers model directory (`config.json`): loaded as it is;
- null: the base model `model=` itself.
Each checkpoint may also be a Hugging Face Hub repo id, `org/name` or `org/name@revision` (a local
directory of that name wins), fetched through huggingface_hub (its cache and HF_HUB_OFFLINE apply).
The tokenizer comes from the checkpoint directory when it holds one (training's special tokens), else
from the base model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from spiel.checkpoint.kind import PEFT_CONFIG_NAME, CheckpointError, checkpoint_kind, has_tokenizer
from spiel.checkpoint.read import read_checkpoint, read_spiel_config
from spiel.io.base_model import load_base_model, load_tokenizer, resolve_device, resolve_dtype

__all__ = [
    "CheckpointError",
    "LoadedModel",
    "checkpoint_kind",
    "load_for_eval",
    "normalize_ckpts",
    "recorded_base",
]

log = logging.getLogger(__name__)

UNVERIFIED_BASE_OVERRIDE = "eval.allow_unverified_base=true"
UNVERIFIED_DELTA_OVERRIDE = "eval.allow_unverified_delta=true"


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    info: dict = field(default_factory=dict)


def normalize_ckpts(ckpt) -> list[str]:
    """`ckpt` as a list of paths: None -> [], one path -> [path], a (Hydra) list -> its strings."""
    if ckpt is None or ckpt == "" or str(ckpt).lower() in ("null", "none"):
        return []
    if isinstance(ckpt, (str, Path)):
        return [str(ckpt)]
    return [str(c) for c in ckpt]


def resolve_ckpts(ckpts: list[str]) -> list[str]:
    """Each `ckpt` entry as a local directory: itself, or the snapshot of the Hub repo (`@revision`) it names."""
    from spiel.io.hub import resolve_checkpoint, split_revision

    resolved = []
    for c in ckpts:
        name, revision = split_revision(c)
        try:
            resolved.append(str(resolve_checkpoint(name, revision)))
        except (FileNotFoundError, ValueError) as e:
            raise CheckpointError(f"ckpt={c}: {e}") from e
    return resolved


def recorded_base(path, kind: str, saved: dict | None = None) -> str | None:
    """The base model a checkpoint names (None for a full model). ``saved``: a SpIEL checkpoint's
    ``spiel_config.json`` when it was already read."""
    if kind == "spiel":
        base = (saved or read_spiel_config(path)).get("base_model") or {}
        return base.get("name_or_path") if isinstance(base, dict) else str(base)
    if kind == "peft":
        return json.loads((Path(path) / PEFT_CONFIG_NAME).read_text()).get("base_model_name_or_path")
    return None


def _recorded_revision(saved: dict) -> str | None:
    """The commit of the base model a SpIEL checkpoint was trained on, when it was loaded from the Hub."""
    base = saved.get("base_model") or {}
    return base.get("revision") if isinstance(base, dict) else None


def _fit_embeddings(model, tokenizer) -> None:
    """Training may have added a pad token and grown the embeddings (open-instruct does); match that. The
    new rows (never trained: embeddings are not SpIEL targets) are set to the mean of the old ones, so the
    result is deterministic (transformers would draw them at random)."""
    import torch

    emb = model.get_input_embeddings()
    if emb is None or len(tokenizer) <= emb.num_embeddings:
        return
    old = emb.num_embeddings
    log.info("resizing embeddings %d -> %d to the checkpoint's tokenizer", old, len(tokenizer))
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        for layer in {
            id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None
        }.values():
            layer.weight[old:] = layer.weight[:old].mean(0, keepdim=True)
            bias = getattr(layer, "bias", None)
            if bias is not None:
                bias[old:] = bias[:old].mean()


def upcast_unquantized(model) -> list[str]:
    """A 4-bit base's parameters that are not quantized (embeddings, norms, ``lm_head``) in float32, as the
    reference's 4-bit evaluation had them; the 4-bit layers keep computing in their compute dtype. Returns
    the names of the parameters cast."""
    import torch

    from spiel.delta.weights import is_quantized

    cast = []
    for name, param in model.named_parameters():
        if param.is_floating_point() and param.dtype != torch.float32 and not is_quantized(param):
            param.data = param.data.float()
            cast.append(name)
    return cast


def load_for_eval(
    ckpt=None,
    model_name: str | None = None,
    dtype: str = "auto",
    quant: str = "none",
    device=None,
    revision: str | None = None,
    allow_unverified_base: bool = False,
    ckpt_weights=None,
    allow_unverified_delta: bool = False,
) -> LoadedModel:
    """Load `ckpt` (see the module docstring) ready for evaluation, in eval mode on `device`.
    `allow_unverified_base`: accept SpIEL checkpoints without base-weight fingerprints;
    `allow_unverified_delta`: without the SHA-256 of their delta file. `ckpt_weights`:
    compose the SpIEL checkpoints as the sum of each delta times its weight."""
    given = normalize_ckpts(ckpt)
    ckpt_weights = _checked_weights(given, ckpt_weights)  # before anything is read or loaded
    ckpts = resolve_ckpts(given)
    device = resolve_device(device)
    quant = "none" if quant in (None, False) else str(quant)
    kinds = [checkpoint_kind(c) for c in ckpts]
    # every check of the SpIEL checkpoint files, once each, before the base model loads
    checked = {
        c: read_checkpoint(
            c,
            allow_unverified_base=allow_unverified_base,
            override=UNVERIFIED_BASE_OVERRIDE,
            allow_unverified_delta=allow_unverified_delta,
            delta_override=UNVERIFIED_DELTA_OVERRIDE,
        )
        for c, k in zip(ckpts, kinds, strict=True)
        if k == "spiel"
    }
    kind = _kind(ckpts, kinds, composed=len(ckpts) > 1 or ckpt_weights is not None)
    info = {
        "ckpt": given,
        "ckpt_dirs": ckpts,
        "quant": quant,
        "device": str(device),
        "dtype": str(resolve_dtype(dtype, device)),
        **({"ckpt_weights": ckpt_weights} if ckpt_weights is not None else {}),
        "kind": kind,
    }
    if kind == "full":
        return _load_full(ckpts[0], given[0], model_name, dtype, quant, device, info)

    saved = checked[ckpts[0]][0] if ckpts and kinds[0] == "spiel" else None
    base, base_name = _load_base(ckpts, kinds, saved, model_name, dtype, quant, device, revision)
    tok_dir = ckpts[0] if ckpts and has_tokenizer(ckpts[0]) else base_name
    tokenizer = load_tokenizer(tok_dir)
    info.update(base=str(base_name), tokenizer=str(tok_dir))
    if quant == "none":
        _fit_embeddings(base, tokenizer)
    else:
        upcast_unquantized(base)

    if kind == "base":
        model = base
    elif kind == "spiel":
        from spiel.model.spiel_model import SpielModel

        wrapped = SpielModel.from_checked(base, ckpts[0], checked[ckpts[0]])
        model = wrapped.merge_and_unload() if quant == "none" else wrapped
    elif kind == "composed":
        from spiel.model.spiel_model import check_weights, compose_checked

        weights = check_weights(ckpt_weights, len(ckpts))  # None: each delta once
        model = compose_checked(ckpts, [checked[c] for c in ckpts], base, weights)
    else:  # peft
        model = _load_peft(base, ckpts[0], merge=quant == "none")
    info["merged"] = quant == "none"
    return LoadedModel(model.eval(), tokenizer, info)


def _checked_weights(given: list[str], ckpt_weights):
    """``ckpt_weights`` as one float per checkpoint (None: not composed), or a CheckpointError."""
    from spiel.model.spiel_model import check_weights

    if ckpt_weights is None:
        return None
    if not given:
        raise CheckpointError("ckpt_weights is given but ckpt=null: weights scale the deltas of ckpt=[...]")
    try:
        return check_weights(ckpt_weights, len(given))
    except ValueError as e:
        raise CheckpointError(f"ckpt_weights={ckpt_weights}: {e}") from None


def _kind(ckpts: list[str], kinds: list[str], composed: bool) -> str:
    """base (no checkpoint) | composed (several deltas, or weighted) | the one checkpoint's kind."""
    if composed and any(k != "spiel" for k in kinds):
        bad = [c for c, k in zip(ckpts, kinds, strict=True) if k != "spiel"]
        raise CheckpointError(
            f"only SpIEL checkpoints can be composed (summed or weighted deltas); not: {bad}"
        )
    return "base" if not ckpts else ("composed" if composed else kinds[0])


def _load_full(path: str, given: str, model_name, dtype, quant, device, info: dict) -> LoadedModel:
    """A full fine-tuned model directory: it is its own base."""
    from safetensors import SafetensorError

    if model_name:
        log.warning("ckpt=%s is a full model; model=%s is ignored", path, model_name)
    try:
        model = load_base_model(path, dtype=dtype, quant=quant, device=device)
    except (OSError, SafetensorError) as e:  # a damaged or truncated weights file
        raise CheckpointError(
            f"ckpt={given}: cannot load this full model directory, its files are damaged "
            f"or incomplete ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from e
    info.update(base=path, merged=True)
    return LoadedModel(model.eval(), load_tokenizer(path), info)


def _load_base(ckpts, kinds, saved, model_name, dtype, quant, device, revision):
    """(base model, its name): model= when given, else the base the first checkpoint records (at the
    commit it was trained on)."""
    from safetensors import SafetensorError

    recorded = recorded_base(ckpts[0], kinds[0], saved) if ckpts else None
    base_name = model_name or recorded
    if not model_name and revision is None and saved is not None:
        revision = _recorded_revision(saved)  # the base commit it was trained on
    if not base_name:
        raise CheckpointError(
            "no base model: ckpt=null evaluates the base model given by model= "
            "(e.g. model=llama2-7b or model=tiny)"
            if not ckpts
            else f"ckpt={ckpts[0]} does not name its base model; pass model=..."
        )
    if model_name and recorded and str(recorded) != str(model_name):
        log.warning(
            "ckpt=%s was trained on %r; evaluating it on model=%r (the weights are checked)",
            ckpts[0],
            recorded,
            model_name,
        )
    try:
        base = load_base_model(base_name, dtype=dtype, quant=quant, device=device, revision=revision)
    except (OSError, SafetensorError) as e:
        where = f" (recorded in {ckpts[0]})" if ckpts and not model_name else ""
        raise CheckpointError(
            f"cannot load the base model {base_name!r}{where}: {e}. Pass model=<name> or "
            "model.name_or_path=<dir> to point at it."
        ) from e
    return base, base_name


def _load_peft(base, path: str, merge: bool):
    from peft import PeftModel

    from spiel.model.spiel_model import CheckpointMismatchError

    try:
        model = PeftModel.from_pretrained(base, path)
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointMismatchError(
            f"peft adapter {path} does not fit the base model {getattr(base.config, '_name_or_path', '?')!r} "
            f"(it was made for {recorded_base(path, 'peft')!r}): {str(e).splitlines()[0]}"
        ) from e
    return model.merge_and_unload() if merge else model
