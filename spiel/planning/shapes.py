"""A model's shapes from its config alone: the architecture is built on the ``meta`` device (no memory,
no weights), so parameter counts and the target layers are exactly those spiel-train would wrap."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# Public LLaMA-2 configs (config.json of meta-llama/Llama-2-{7,13,70}b-hf), so planning needs no download.
KNOWN_LLAMA2 = {
    "meta-llama/Llama-2-7b-hf": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
    ),
    "meta-llama/Llama-2-13b-hf": dict(
        hidden_size=5120,
        intermediate_size=13824,
        num_hidden_layers=40,
        num_attention_heads=40,
        num_key_value_heads=40,
    ),
    "meta-llama/Llama-2-70b-hf": dict(
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
    ),
}


def llama2_config(name: str):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=32000,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        **KNOWN_LLAMA2[name],
    )


def load_config(name_or_path: str):
    """The transformers config of a known LLaMA-2 name, the ``tiny`` alias, a local directory, or a hub id
    already in the local cache. Raises ValueError naming the model when none of these has it."""
    if name_or_path in KNOWN_LLAMA2:
        return llama2_config(name_or_path)
    from transformers import AutoConfig

    from spiel.io.base_model import refuse_remote_code, resolve_model_path

    refuse_remote_code(name_or_path)
    try:
        return AutoConfig.from_pretrained(resolve_model_path(name_or_path), trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"no config for model {name_or_path!r} (known without download: "
            f"{', '.join(KNOWN_LLAMA2)}, tiny, or a local directory): {e}"
        ) from None


@dataclass
class ModelShape:
    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    total_params: int
    layer_params: int  # one decoder layer (what FSDP gathers at a time)
    buffer_bytes: int  # e.g. rotary frequencies
    meta_model: torch.nn.Module = field(repr=False)
    _targets: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_config(cls, config, name: str = "") -> ModelShape:
        from transformers import AutoModelForCausalLM

        from spiel.training.launch.parallel import decoder_layers

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        layers = decoder_layers(model)
        heads = config.num_attention_heads
        return cls(
            name=name or getattr(config, "_name_or_path", "") or type(model).__name__,
            hidden=config.hidden_size,
            intermediate=config.intermediate_size,
            layers=len(layers),
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            vocab=config.vocab_size,
            total_params=sum(p.numel() for p in model.parameters()),
            layer_params=sum(p.numel() for p in layers[0].parameters()),
            buffer_bytes=sum(b.numel() * b.element_size() for b in model.buffers()),
            meta_model=model,
        )

    @classmethod
    def from_name(cls, name_or_path: str) -> ModelShape:
        return cls.from_config(load_config(name_or_path), name=name_or_path)

    def targets(self, target_modules=None) -> dict[str, tuple[int, int]]:
        """``(out, in)`` of each linear layer SpIEL/LoRA would tune (spiel.model.targets' own selection)."""
        from spiel.model.targets import find_targets

        key = repr(target_modules)
        if key not in self._targets:
            chosen = find_targets(self.meta_model, target_modules)
            self._targets[key] = {n: tuple(m.weight.shape) for n, m in chosen.items()}
        return self._targets[key]

    def linears(self) -> dict[str, tuple[int, int]]:
        return {
            n: tuple(m.weight.shape)
            for n, m in self.meta_model.named_modules()
            if isinstance(m, torch.nn.Linear)
        }
