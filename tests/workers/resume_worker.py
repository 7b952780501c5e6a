"""Train a small SpIEL model from step START to END, optionally resuming from a saved state.

    python resume_worker.py METHOD START END OUT_DIR [RESUME_DIR]

Saves the delta checkpoint, optimizer and selector state to OUT_DIR. Data for step s comes from a
generator seeded with s, so the data position is just the step number.
"""

import sys

import torch
import torch.nn as nn

from spiel import SpielConfig, get_spiel_model
from spiel.model.spiel_model import SpielModel

TOTAL = 40


def base():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 24), nn.Tanh(), nn.Linear(24, 16))


def main(method, start, end, out_dir, resume_dir=None):
    config = SpielConfig(method=method, num_tunable=80, reselection_steps=6, estimation_steps=2, seed=3)
    if resume_dir:
        model = SpielModel.from_pretrained(base(), resume_dir, is_trainable=True)
    else:
        model = get_spiel_model(base(), config)
    optimizer = model.make_optimizer(lr=1e-2, weight_decay=0.1)
    selector = model.make_selector(optimizer, total_steps=TOTAL)
    if resume_dir:
        optimizer.load_state_dict(torch.load(f"{resume_dir}/optimizer.pt"))
        selector.load_state_dict(torch.load(f"{resume_dir}/selector.pt"))
        assert selector.t == start
    for step in range(start, end):
        data = torch.Generator().manual_seed(step)
        for _ in range(2):
            x = torch.randn(8, 16, generator=data)
            model(x).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        selector.step()
    model.save_pretrained(out_dir, compact=False)  # a training checkpoint: grown_at is kept
    torch.save(optimizer.state_dict(), f"{out_dir}/optimizer.pt")
    torch.save(selector.state_dict(), f"{out_dir}/selector.pt")


if __name__ == "__main__":
    method, start, end, out_dir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    main(method, start, end, out_dir, sys.argv[5] if len(sys.argv) > 5 else None)
