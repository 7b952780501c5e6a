"""What the benchmarks train: LLaMA shapes, the paper's parameter budget, random bases, method configs.

Budget. The paper's Table 3 runs LoRA rank 64 (and SpIEL at the same count) on LLaMA-2-7B's seven
projections; :func:`paper_density` computes what fraction of the target weights that is (about 2.4%),
and :func:`equivalent_rank` the LoRA rank with that density on another shape (16 at hidden 1024).

Method configs. The registry (``spiel.training.methods``) reads its settings from spiel-train's method schemas
(``spiel.training.config.schema``); :func:`method_config` builds those very dataclasses, which import without
hydra, so the CUDA box needs none.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import re
import tempfile
from dataclasses import asdict, dataclass

import torch
import yaml

from spiel.model.llama import LLAMA2_7B_DIMS, PAPER_RANK, paper_density  # noqa: F401 (re-exported)
from spiel.paths import CONFIG_DIR
from spiel.training.config.schema import METHOD_NAMES

METHOD_CONFIG_DIR = CONFIG_DIR / "method"


@functools.cache
def paper_hparams(name: str) -> tuple[float, float]:
    """``(lr, weight_decay)`` of a method's config file: the paper's Table 4 values for LLaMA2-7b. Read with
    plain YAML, not Hydra, so the CUDA path needs no hydra. Speed does not depend on them; bench_step uses
    them so every optimizer runs its real update (decay included)."""
    cfg = yaml.safe_load((METHOD_CONFIG_DIR / f"{name}.yaml").read_text())
    return float(cfg["lr"]), float(cfg["weight_decay"])


@dataclass(frozen=True)
class LlamaShape:
    hidden: int = 1024
    intermediate: int = 2752  # 1024 · 11008/4096, LLaMA-2's MLP ratio
    layers: int = 4
    heads: int = 8  # head_dim 128 as in LLaMA-2
    kv_heads: int = 8
    vocab: int = 2048  # small, so the seven block projections dominate the cost

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def projections(self) -> dict[str, tuple[int, int]]:
        """``(out, in)`` of each target projection of one block."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        h, m = self.hidden, self.intermediate
        return {
            "q_proj": (q, h),
            "k_proj": (kv, h),
            "v_proj": (kv, h),
            "o_proj": (h, q),
            "gate_proj": (m, h),
            "up_proj": (m, h),
            "down_proj": (h, m),
        }

    def target_numel(self) -> int:
        return self.layers * sum(o * i for o, i in self.projections().values())

    def lora_params_per_rank(self) -> int:
        return self.layers * sum(o + i for o, i in self.projections().values())

    def to_dict(self) -> dict:
        return asdict(self)


LLAMA2_7B = LlamaShape(**LLAMA2_7B_DIMS)
CPU_DEFAULT = LlamaShape()


def equivalent_rank(shape: LlamaShape, density: float | None = None) -> int:
    """The LoRA rank whose parameter count is ``density`` (default: the paper's) of ``shape``'s targets."""
    density = paper_density() if density is None else density
    return max(1, round(density * shape.target_numel() / shape.lora_params_per_rank()))


# -- random bases -------------------------------------------------------------------------------------------
def llama_config(shape: LlamaShape, max_positions: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=max(max_positions, 128),
        tie_word_embeddings=False,
        use_cache=False,
        attn_implementation="sdpa",
    )


def random_llama(
    shape: LlamaShape,
    max_positions: int,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
):
    """A randomly initialized ``LlamaForCausalLM`` made directly in ``dtype`` on ``device``."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(llama_config(shape, max_positions))
    finally:
        torch.set_default_dtype(old)
    return model.eval()


def random_llama_nf4(
    shape: LlamaShape, max_positions: int, compute_dtype: torch.dtype, device: str = "cpu", seed: int = 0
):
    """The same random base, saved and reloaded through transformers' bitsandbytes NF4 path (double
    quantization), as ``spiel.io.base_model`` loads ``quant=nf4`` bases, but with a chosen compute dtype:
    bfloat16 on CUDA (the paper), float32 on CPU (bf16 CPU matmuls are not a meaningful clock)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    model = random_llama(shape, max_positions, torch.float32, "cpu", seed)
    with tempfile.TemporaryDirectory(prefix="spiel-bench-") as tmp:
        model.save_pretrained(tmp)
        del model
        gc.collect()
        qcfg = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
        model = AutoModelForCausalLM.from_pretrained(
            tmp,
            dtype=compute_dtype,
            quantization_config=qcfg,
            device_map={"": str(device)},
            trust_remote_code=False,
        )
    return model.eval()


def release_free_memory() -> None:
    """Collect garbage and hand glibc's free heap back to the OS, so RSS is what is live (Linux only)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# -- method configs -------------------------------------------------------------------------------------------
def method_config(
    name: str,
    rank: int,
    *,
    lr: float | None = None,
    weight_decay: float | None = None,
    reselection_steps: int = 20,
    estimation_steps: int = 5,
    grad_path: str = "auto",
):
    """The ``mcfg`` the registry wraps with: spiel-train's method schema (``spiel.training.config.schema``, which
    needs no hydra) for ``name`` at LoRA rank / SpIEL rank-equivalent ``rank``."""
    from spiel.training.config import schema

    if name not in METHOD_NAMES:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHOD_NAMES)}")
    default_lr, default_wd = paper_hparams(name)
    kwargs = {
        "name": name,
        "lr": default_lr if lr is None else lr,
        "weight_decay": default_wd if weight_decay is None else weight_decay,
    }
    method = registry_method(name)
    if method.budget_key is not None:
        kwargs[method.budget_key] = rank
    if method.is_sparse:
        kwargs.update(
            reselection_steps=reselection_steps, estimation_steps=estimation_steps, grad_path=grad_path
        )
    return schema.METHOD_CONFIGS[name](**kwargs)


def paper_method(name: str) -> str:
    """The registry method behind a benchmark name: ``static`` is SpIEL-AG's layer and optimizer."""
    return "ag" if name == "static" else name


def registry_method(name: str):
    """The training method (``spiel.training.methods``) of exactly this name, or None (``static``, ``floor``,
    ``lora0``, ...: the benchmarks' own variants)."""
    from spiel.training.methods import METHOD_REGISTRY

    return METHOD_REGISTRY.get(name)


def is_sparse(name: str) -> bool:
    """A SpIEL model (``static`` included: SpIEL-AG's layer without a selector)."""
    method = registry_method(paper_method(name))
    return method is not None and method.is_sparse


def reselects(name: str) -> bool:
    """A SpIEL model that gets a selector (``static`` keeps its initial random positions)."""
    return is_sparse(name) and name != "static"


def wrap_for_training(name: str, model, mcfg, *, seed: int, quantized: bool):
    """``(trainable model, optimizer)`` as spiel-train builds them: the registry wraps and picks the
    optimizer (None → torch AdamW over the trainable parameters, as the Trainer's ``adamw_torch``).
    ``name="static"`` is SpIEL-AG's layer and optimizer; the caller gives it no selector, so its initial
    random indices stay for good. SpIEL methods get their selector from ``model.make_selector``."""
    from spiel.training.methods import get_method

    method = get_method(paper_method(name))
    model = method.wrap(model, mcfg, seed=seed, quantized=quantized)
    if name == "static":
        model.allow_static_training()
    optimizer = method.make_optimizer(model, mcfg, mcfg.lr, mcfg.weight_decay)
    if optimizer is None:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=mcfg.lr, weight_decay=mcfg.weight_decay)
    return model, optimizer


def trainable_count(name: str, model) -> int:
    if hasattr(model, "num_tunable") and is_sparse(name):
        return int(model.num_tunable())
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def parse_methods(text: str, allowed: tuple[str, ...]) -> list[str]:
    names = [m for m in re.split(r"[,\s]+", text.strip()) if m]
    bad = [m for m in names if m not in allowed]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; choose from {', '.join(allowed)}")
    return names
