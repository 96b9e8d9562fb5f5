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
from torch import nn


def world_size() -> int:
    """Number of ranks (1 without torch.distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def unwrap(net: nn.Module) -> nn.Module:
    """The module inside DDP / DataParallel wrappers."""
    while isinstance(net, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        net = net.module
    return net


def average_gradients(params) -> None:
    """Average ``.grad`` of ``params`` over ranks (params without a grad are skipped)."""
    size = world_size()
    if size == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Give every rank rank ``src``'s buffers (running BatchNorm statistics)."""
    if world_size() == 1:
        return
    for buf in model.buffers():
        dist.broadcast(buf, src)


def mean_over_ranks(value: float) -> float:
    """The mean of a scalar over ranks, known on every rank."""
    if world_size() == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / world_size()
