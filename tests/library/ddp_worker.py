"""Worker for test_ddp: trains one minibatch shard under DistributedDataParallel (gloo)."""

import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
from spikingjelly.activation_based import functional, layer

from spikingjelly_saf import SAFNode, saf_online_training


def main(rank: int, world_size: int, method: str, step_mode: str, out_path: str) -> None:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    net = nn.Sequential(layer.Linear(10, 16), SAFNode(), layer.Linear(16, 3)).double()
    functional.set_step_mode(net, step_mode)
    model = nn.parallel.DistributedDataParallel(net)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 5, 10, dtype=torch.float64, generator=g)
    target = torch.randint(0, 3, (8,), generator=g)
    shard = slice(rank * 4, rank * 4 + 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    saf_online_training(model, opt, x[shard], target[shard], nn.functional.cross_entropy, method)
    if rank == 0:
        torch.save({k: v.clone() for k, v in net.state_dict().items()}, out_path)
    # Both ranks finish their collectives before gloo's threads are torn down; exiting while the
    # peer still talks can abort the process at shutdown.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
