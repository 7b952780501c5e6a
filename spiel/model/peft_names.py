"""peft's adapter method names on a SpielModel. A SpielModel forwards unknown attributes to the wrapped
transformers model, whose own peft integration (``set_adapter``, ``load_adapter``, ...) would answer with
messages about PEFT versions or LoRA layers that do not apply. The names with a SpIEL counterpart are
methods of SpielModel (``set_adapter`` is ``set_delta``, ...); the others are refused here, each with what
to use instead."""

from __future__ import annotations

_DISABLE = "`with model.disable_delta():` runs the base model alone (peft's disable_adapter)"

# name -> what to use on a SpielModel instead
NO_SPIEL_EQUIVALENT = {
    "add_adapter": "a SpielModel trains one delta (get_spiel_model); load_delta(path, name) adds saved ones",
    "enable_adapters": _DISABLE,
    "disable_adapters": _DISABLE,
    "enable_adapter_layers": _DISABLE,
    "disable_adapter_layers": _DISABLE,
    "add_weighted_adapter": "add_weighted_delta(names, weights, name): an exact weighted sum on the union of "
    "the positions (peft's SVD/TIES/DARE combinations do not apply to sparse deltas)",
    "merge_adapter": "merge_and_unload() (merges every delta and returns the plain model)",
    "unmerge_adapter": "unload() returns the pristine base; merge_and_unload() the merged one",
    "get_adapter_state_dict": "delta_state() (indices, values, grown_at of every delta layer)",
    "peft_config": "spiel_config (a SpielConfig)",
    "active_adapters": "active_delta (one delta is active at a time)",
    "set_requires_grad": "load_delta for inference; SpielModel.from_pretrained(..., is_trainable=True) to train",
}


def peft_name_error(name: str) -> AttributeError:
    return AttributeError(
        f"SpielModel has no {name!r} (a peft/transformers adapter name; a SpielModel holds "
        f"sparse deltas, not adapters): use {NO_SPIEL_EQUIVALENT[name]}"
    )
