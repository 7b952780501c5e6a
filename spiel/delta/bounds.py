"""What values a fine-tuned sparse delta can hold: finite, in its dtype, and at most ``MAX_DELTA_MAGNITUDE``.

Why ``|δ| ≤ 1e4``: the optimizers move a value by at most about ``3.2 · lr`` per step (Adam's bias-corrected
``|m̂| / √v̂`` stays below ``(1 − β1) / √(1 − β2) ≈ 3.16`` with the default betas; SM3 likewise), so a
delta of 1e4 needs ``lr · steps > 3000`` — e.g. lr 1e-2 held for 300,000 steps — far past any fine-tuning
run. The base weights it would be added to are of order 1e-2 to 1 (LLaMA's), so such a value replaces
the base's function instead of adjusting it, and below the bound a dot product over 1e5 inputs of
magnitude 1e4 stays far inside float32 (and W + δ inside float16's 65504). Values past it come from a
diverged run, a wrong weight in a composition, or a damaged file; they are refused, not loaded.

``lossless_into(src, dst)``: whether casting ``src`` values to ``dst`` keeps every value (the same dtype,
or bfloat16/float16 into float32); a narrowing cast could turn finite values into ``inf`` or round them.
"""

from __future__ import annotations

import torch

MAX_DELTA_MAGNITUDE = 1e4
_WIDENINGS = {torch.float32: (torch.bfloat16, torch.float16)}


def lossless_into(src: torch.dtype, dst: torch.dtype) -> bool:
    return src == dst or src in _WIDENINGS.get(dst, ())


def delta_value_problem(values: torch.Tensor) -> str | None:
    """None for values a fine-tuned delta can hold; else what is wrong (count, first position, its value)."""
    if values.numel() == 0:
        return None
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        first = int((~finite).nonzero()[0])
        return (
            f"{int((~finite).sum())} non-finite value(s) of {values.numel()} (NaN/Inf; first at position "
            f"{first}: {float(values[first])})"
        )
    too_large = values.detach().abs() > MAX_DELTA_MAGNITUDE
    if bool(too_large.any()):
        first = int(too_large.nonzero()[0])
        return (
            f"{int(too_large.sum())} value(s) of {values.numel()} beyond ±{MAX_DELTA_MAGNITUDE:g} (first at "
            f"position {first}: {float(values[first]):.4g}), which no fine-tuning run of this base produces "
            "(see spiel.delta.bounds)"
        )
    return None
