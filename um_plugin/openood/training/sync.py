"""Keep ranks identical when OpenOOD trains with ``num_gpus > 1`` (torch.distributed).

OpenOOD wraps the network in DistributedDataParallel *before* the trainer exists, so DDP does
not know about UMAP's mask scores (new parameters) and would not average their gradients. The
trainers therefore step the unwrapped network and average gradients themselves, in one
flattened all-reduce, and broadcast rank 0's buffers (BatchNorm statistics) after each epoch.
Every function is a no-op without an initialised process group.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from um_plugin.core.distributed import (average_gradients, broadcast_buffers,  # noqa: F401
                                        unwrap, world_size)


def mean_over_ranks(value: float) -> float:
    """The mean of a scalar over ranks, known on every rank."""
    if world_size() == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / world_size()
