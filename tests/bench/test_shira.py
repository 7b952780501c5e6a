"""peft's SHiRA as a quality-benchmark method: the same budget as SpIEL's rank-equivalent r (r·Σ(in+out)
entries over the seven projections), starting from the base model's function."""

from __future__ import annotations

import copy

import torch

from spiel.bench.models import method_config, wrap_for_training
from spiel.bench.quality import search_grid, wrap_shira
from spiel.testing import tiny_model


def test_shira_trains_spiels_budget_from_the_base_function():
    base = tiny_model()
    shira, optimizer = wrap_shira(copy.deepcopy(base), 4, lr=1e-2, weight_decay=0.1, seed=1)
    trainable = [p for p in shira.parameters() if p.requires_grad]
    count = sum(p.numel() for p in trainable)
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    expected = sum(
        4 * (m.in_features + m.out_features)
        for name, m in base.named_modules()
        if isinstance(m, torch.nn.Linear) and name.endswith(targets)
    )
    assert count == expected  # r·(in+out) per projection
    spiel, _ = wrap_for_training(
        "static", copy.deepcopy(base), method_config("ag", 4), seed=1, quantized=False
    )
    assert abs(count - spiel.num_tunable()) <= 0.001 * count  # the same budget (spiel floors per matrix)
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        assert torch.equal(shira(input_ids=ids).logits, base(input_ids=ids).logits)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["params"] == trainable
    assert search_grid("shira", (1.0,), (1.0,)) == search_grid("static", (1.0,), (1.0,))  # static's defaults
