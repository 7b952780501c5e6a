"""One rank of a gloo run of SpIEL in which the WORLD ranks split one global batch (WORLD=1: one process
with all of it); writes the indices after every reselection and the final values.

    python global_batch_worker.py METHOD[:GROWTH][+rows] RANK WORLD PORT OUT_DIR

``+rows``: SpIEL-AG's first gradient streamed one row at a time (never whole), as for large matrices.
"""

import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn

from spiel import SpielConfig, get_spiel_model

GLOBAL_BATCH = 16


def main(method_growth, rank, world, port, out_dir):
    method_growth, _, streamed = method_growth.partition("+")
    if streamed:
        import spiel.delta.function

        spiel.delta.function.PROBE_BLOCK_BYTES = 1  # one row per block
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
    selector = model.make_selector(optimizer, total_steps=30)
    history = []
    share = GLOBAL_BATCH // world
    for step in range(30):
        x = torch.randn(GLOBAL_BATCH, 16, generator=torch.Generator().manual_seed(step))
        # the mean over this rank's rows; DDP averages the ranks: the global batch's mean
        ddp(x[rank * share : (rank + 1) * share]).pow(2).mean().backward()
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


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
