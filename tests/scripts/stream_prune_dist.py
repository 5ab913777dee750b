"""Out-of-core pruning on 2 gloo processes (test driver for tests/test_pruning_streaming.py).

Usage: python tests/scripts/stream_prune_dist.py SOURCE TARGET

Each process streams the same layers from SOURCE with its share of the calibration batches (batch
i goes to rank i % 2), the statistics are summed with all_reduce, and rank 0 alone writes TARGET.
"""

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rcpu_lightning.pruning import PruningConfig
from rcpu_lightning.pruning.streaming import prune_checkpoint
from test_pruning_streaming import _batches


def _reduce(t: torch.Tensor) -> torch.Tensor:
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def worker(rank: int, source: str, target: str, port: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        mine = [b for i, b in enumerate(_batches()) if i % 2 == rank]
        config = PruningConfig(ratio=0.34, head_rounding="nearest")
        prune_checkpoint(source, target, config, mine, reduce=_reduce, progress=False, write=rank == 0)
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    mp.spawn(worker, args=(sys.argv[1], sys.argv[2], port), nprocs=2, join=True)
