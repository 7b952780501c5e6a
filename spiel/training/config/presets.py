"""Training presets for one's own model (``spiel-train model=hf model.name_or_path=DIR``), derived from its
size. spiel has settings measured at two sizes: the paper's for LLaMA-2-7B (``configs/method/<m>.yaml``)
and the ones picked on the shipped 3M-parameter tiny model (``configs/model_method/tiny_<m>.yaml``,
``configs/model_train/tiny.yaml``). A model of N parameters gets

- the paper's budget: SpIEL's ``rank_equiv`` and LoRA's ``r`` are the rank whose parameter count is the
  paper's share of the target weights (LoRA rank 64 on LLaMA-2-7B, 2.47%), on this model's own layers;
- ``method.lr``, SpIEL's ``method.weight_decay`` and ``batch_size``: log-log interpolation in N between the
  two measured sizes (the 7B value at and above 7B, the tiny one at and below the tiny model), so the
  settings move smoothly from the demo's large steps to the paper's;
- ``micro_batch_size``: 16 below 100M parameters, 4 below 1B, else 1 (a divisor of the batch);
- ``model.dtype: auto``: bfloat16 on a GPU that has it, else float32.

Command-line overrides win over every preset; ``spiel-train`` prints the values it trains with at start.
"""

from __future__ import annotations

import functools
import math

from omegaconf import OmegaConf

from spiel.paths import CONFIG_DIR

PRESET_KEYS = {  # method -> the method keys that get presets
    "ag": ("lr", "weight_decay", "rank_equiv"),
    "ma": ("lr", "weight_decay", "rank_equiv"),
    "lora": ("lr", "r"),
    "ia3": ("lr",),
    "full": ("lr",),
}
TRAIN_KEYS = ("batch_size", "micro_batch_size")


def _yaml(path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


@functools.cache
def _anchors(method: str) -> dict:
    """The measured settings: {"paper": {...}, "tiny": {...}} of ``method`` from the config files."""
    paper = _yaml(CONFIG_DIR / "method" / f"{method}.yaml")
    paper["batch_size"] = _yaml(CONFIG_DIR / "train.yaml")["batch_size"]
    tiny = {**paper, **_yaml(CONFIG_DIR / "model_train" / "tiny.yaml")}
    tiny.update(_yaml(CONFIG_DIR / "model_method" / f"tiny_{method}.yaml").get("method", {}))
    return {"paper": paper, "tiny": tiny}


@functools.lru_cache(maxsize=2)
def _anchor_sizes() -> tuple[int, int]:
    """Parameters of the tiny model and of LLaMA-2-7B (untied head, as the paper's base)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from spiel.io.base_model import build_meta_model
    from spiel.model.llama import LLAMA2_7B_DIMS as d
    from spiel.model.targets import model_numel

    config = LlamaConfig(
        hidden_size=d["hidden"],
        intermediate_size=d["intermediate"],
        num_hidden_layers=d["layers"],
        num_attention_heads=d["heads"],
        num_key_value_heads=d["kv_heads"],
        vocab_size=d["vocab"],
        tie_word_embeddings=False,
    )
    with torch.device("meta"):
        paper = LlamaForCausalLM(config)
    return model_numel(build_meta_model("tiny")), model_numel(paper)


def interpolate(n: float, n_small: float, small: float, n_large: float, large: float) -> float:
    """log-log interpolation between (n_small, small) and (n_large, large), flat outside them."""
    t = min(1.0, max(0.0, math.log(n / n_small) / math.log(n_large / n_small)))
    return math.exp(math.log(small) + t * (math.log(large) - math.log(small)))


def _round_sig(x: float) -> float:
    return float(f"{x:.2g}")


@functools.lru_cache(maxsize=16)
def presets(name_or_path: str, method: str, revision: str | None = None) -> dict:
    """``{dotted key: value}`` for ``method`` on the model ``name_or_path`` (read from its config only),
    plus ``"parameters"`` (its size)."""
    from spiel.io.base_model import build_meta_model
    from spiel.model.llama import paper_density
    from spiel.model.targets import find_targets, model_numel

    meta = build_meta_model(name_or_path, revision)
    n = model_numel(meta)
    n_tiny, n_paper = _anchor_sizes()
    anchors = _anchors(method)

    def between(key: str) -> float:
        return interpolate(n, n_tiny, float(anchors["tiny"][key]), n_paper, float(anchors["paper"][key]))

    out: dict = {"parameters": n, "method.lr": _round_sig(between("lr"))}
    keys = PRESET_KEYS[method]
    if "weight_decay" in keys:
        out["method.weight_decay"] = _round_sig(between("weight_decay"))
    if "rank_equiv" in keys or "r" in keys:
        shapes = [m.weight.shape for m in find_targets(meta, None).values()]
        rank = max(1, round(paper_density() * sum(o * i for o, i in shapes) / sum(o + i for o, i in shapes)))
        out["method.rank_equiv" if "rank_equiv" in keys else "method.r"] = rank
    batch = 2 ** round(math.log2(between("batch_size")))
    micro = 16 if n < 100e6 else 4 if n < 1e9 else 1
    out["batch_size"], out["micro_batch_size"] = batch, min(micro, batch)
    return out


def preset_value(key: str, *, _root_) -> object:
    """The ``spiel_preset`` resolver: ``${spiel_preset:method.lr}`` in configs/model_*/hf*.yaml."""
    model = _root_.model
    name = model.get("name_or_path")
    if not name:  # validate() reports the missing model; nothing to derive from
        return None
    return presets(str(name), str(_root_.method.name), model.get("revision"))[key]


def preset_line(cfg, values: dict) -> str:
    """What spiel-train prints at start for model=hf: the size and the value of every preset key."""
    shown = {"model.dtype": cfg.model.get("dtype")}
    for key in values:
        if key != "parameters":
            shown[key] = OmegaConf.select(cfg, key)
    derived = ", ".join(
        f"{k}={v}" + ("" if v == values.get(k, v) else f" (preset {values[k]})") for k, v in shown.items()
    )
    return (
        f"model=hf: presets for {cfg.model.name_or_path} ({values['parameters'] / 1e6:.1f}M parameters, "
        f"derived from its size; override any key on the command line): {derived}"
    )
