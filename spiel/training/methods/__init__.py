"""The method registry: one name -> how the model is wrapped, which optimizer runs, and how
the result is saved. ``ag``/``ma`` (SpIEL, our optimizers and selector), ``lora``/``ia3`` (peft) and
``full``. Quantization (``quant=nf4``) is orthogonal: see ``spiel.training.methods.quant``.

    method = get_method("ag")
    model = method.wrap(base_model, method_cfg, seed=42, quantized=False)
"""

from __future__ import annotations

from spiel.training.methods.base import Method
from spiel.training.methods.full import FullMethod
from spiel.training.methods.peft_methods import IA3Method, LoraMethod
from spiel.training.methods.spiel_methods import SpielMethod

METHOD_REGISTRY: dict[str, Method] = {
    "ag": SpielMethod("ag"),
    "ma": SpielMethod("ma"),
    "lora": LoraMethod(),
    "ia3": IA3Method(),
    "full": FullMethod(),
}


def get_method(name: str) -> Method:
    if name not in METHOD_REGISTRY:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHOD_REGISTRY)}")
    return METHOD_REGISTRY[name]


__all__ = ["METHOD_REGISTRY", "Method", "get_method"]
