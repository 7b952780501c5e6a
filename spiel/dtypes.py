"""The floating-point dtypes spiel takes by name: ``model.dtype``, ``method.delta_dtype``, spiel-export's
``dtype=`` and the benchmarks' ``--dtype``."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
