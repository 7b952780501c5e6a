"""One rank of a two-process gloo DDP run of SpIEL; writes the indices after every reselection.

python ddp_worker.py METHOD[:GROWTH] RANK WORLD PORT OUT_DIR
"""

import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn

from spiel import SpielConfig, get_spiel_model


def start_rank(method_growth, rank, world, port):
    """Join the gloo group and build the same small SpIEL model on every rank: (model, ddp, optimizer, selector)."""
    method, _, growth = method_growth.partition(":")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 24), nn.Tanh(), nn.Linear(24, 16))
    model = get_spiel_model(
        net,
        SpielConfig(
            method=method, num_tunable=80, reselection_steps=5, estimation_steps=2, growth=growth or "paper"
        ),
    )
    ddp = nn.parallel.DistributedDataParallel(model)
    optimizer = model.make_optimizer(lr=1e-2)
    return model, ddp, optimizer, model.make_selector(optimizer, total_steps=30)


def train_and_save(model, ddp, optimizer, selector, batch_of_step, rank, out_dir):
    """30 steps on ``batch_of_step(step)``; this rank's indices after every reselection and its final values
    go to OUT_DIR/rank{rank}.pt. Ends the process group."""
    history = []
    for step in range(30):
        ddp(batch_of_step(step)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        selector.step()
        if selector.schedule.is_reselection(selector.t):
            history.append({n: layer.indices.clone() for n, layer in model.deltas.items()})
    torch.save(
        {"history": history, "values": {n: layer.values.detach() for n, layer in model.deltas.items()}},
        f"{out_dir}/rank{rank}.pt",
    )
    dist.destroy_process_group()


def main(method_growth, rank, world, port, out_dir):
    model, ddp, optimizer, selector = start_rank(method_growth, rank, world, port)

    def batch_of_step(step):  # each rank sees different data
        return torch.randn(8, 16, generator=torch.Generator().manual_seed(1000 * rank + step))

    train_and_save(model, ddp, optimizer, selector, batch_of_step, rank, out_dir)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
