"""Support recovery: a student learns a teacher that differs from it by a sparse delta of known support.

With the same budget k and the same steps, SpIEL-AG must end with at most half the loss of a fixed
random index set and find far more of the true support than chance (the density); SpIEL-MA must land
between the two (the paper's ordering), beating the static set's loss by 5% and finding at least twice
the chance share of the support.
"""

import pytest
import torch
import torch.nn as nn

from spiel import SpielConfig, get_spiel_model

WIDTH, K, STEPS = 48, 60, 240


def net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(WIDTH, WIDTH, bias=False), nn.Tanh(), nn.Linear(WIDTH, WIDTH, bias=False))


def teacher_and_support():
    teacher = net(0)
    gen = torch.Generator().manual_seed(123)
    support = {}
    for name, module in teacher.named_modules():
        if isinstance(module, nn.Linear):
            idx = torch.randperm(WIDTH * WIDTH, generator=gen)[:K]
            with torch.no_grad():
                module.weight.view(-1)[idx] += torch.randn(K, generator=gen).sign() * (
                    0.5 + torch.rand(K, generator=gen)
                )
            support[name] = set(idx.tolist())
    return teacher, support


def train(method: str, static: bool):
    teacher, support = teacher_and_support()
    model = get_spiel_model(net(0), SpielConfig(method=method, num_tunable=2 * K, seed=0))
    optimizer = model.make_optimizer(lr=0.05)
    selector = model.make_selector(optimizer, total_steps=STEPS) if not static else None
    if static:
        model.allow_static_training()
    data = torch.Generator().manual_seed(7)
    for _ in range(STEPS):
        for _ in range(2):  # two micro-batches per optimizer step
            x = torch.randn(64, WIDTH, generator=data)
            with torch.no_grad():
                target = teacher(x)
            (((model(x) - target) ** 2).mean() / 2).backward()
        optimizer.step()
        optimizer.zero_grad()
        if selector:
            selector.step()
    x = torch.randn(1024, WIDTH, generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        loss = ((model(x) - teacher(x)) ** 2).mean().item()
    recall = sum(len(set(layer.indices.tolist()) & support[n]) for n, layer in model.deltas.items()) / (2 * K)
    return loss, recall


@pytest.mark.slow
def test_ag_recovers_the_support_and_beats_a_static_random_set():
    chance = K / (WIDTH * WIDTH)
    static_loss, static_recall = train("ag", static=True)
    ag_loss, ag_recall = train("ag", static=False)
    ma_loss, ma_recall = train("ma", static=False)
    print(
        f"\nsupport recovery (k={K}/matrix, density {chance:.3f}, {STEPS} steps): "
        f"static loss {static_loss:.4f} recall {static_recall:.3f}; AG loss {ag_loss:.4f} recall {ag_recall:.3f}; "
        f"MA loss {ma_loss:.4f} recall {ma_recall:.3f}"
    )
    assert ag_loss <= 0.5 * static_loss
    assert ag_recall >= 5 * chance
    # MA lands between static and AG (measured: loss 0.526 vs static 0.584, recall 0.075 = 2.9x chance)
    assert ma_loss <= 0.95 * static_loss
    assert ma_recall >= 2 * chance
    assert ag_loss < ma_loss
