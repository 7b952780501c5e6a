"""One rank of a gloo run of SpIEL in which the WORLD ranks split one global batch (WORLD=1: one process
with all of it); writes the indices after every reselection and the final values.

    python global_batch_worker.py METHOD[:GROWTH][+rows] RANK WORLD PORT OUT_DIR

``+rows``: SpIEL-AG's first gradient streamed one row at a time (never whole), as for large matrices.
"""

import sys

import torch
from ddp_worker import start_rank, train_and_save  # this script's folder is on sys.path when it runs

GLOBAL_BATCH = 16


def main(method_growth, rank, world, port, out_dir):
    method_growth, _, streamed = method_growth.partition("+")
    if streamed:
        import spiel.delta.function

        spiel.delta.function.PROBE_BLOCK_BYTES = 1  # one row per block
    model, ddp, optimizer, selector = start_rank(method_growth, rank, world, port)
    share = GLOBAL_BATCH // world

    # the mean over this rank's rows; DDP averages the ranks: the global batch's mean
    def batch_of_step(step):
        x = torch.randn(GLOBAL_BATCH, 16, generator=torch.Generator().manual_seed(step))
        return x[rank * share : (rank + 1) * share]

    train_and_save(model, ddp, optimizer, selector, batch_of_step, rank, out_dir)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
