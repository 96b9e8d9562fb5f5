"""The few torch.distributed facts the method needs, safe when it is not initialised.

Under ``torchrun`` the core trains a DistributedDataParallel model by stepping the module inside
it and averaging gradients itself (:func:`average_gradients`, the engine's ``grad_hook``): DDP
only knows the parameters that existed when it was built, and UMAP adds mask scores later.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    """Only rank 0 shows progress bars and logs."""
    return not is_distributed() or dist.get_rank() == 0


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over ranks (a no-op without torch.distributed)."""
    if is_distributed():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def world_size() -> int:
    """Number of ranks (1 without torch.distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / DataParallel wrappers."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def average_gradients(params) -> None:
    """Average ``.grad`` of ``params`` over ranks in one flat all-reduce (no grad: skipped)."""
    size = world_size()
    grads = [p.grad for p in params if p.grad is not None]
    if size == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Give every rank rank ``src``'s buffers (running BatchNorm statistics)."""
    if world_size() == 1:
        return
    for buf in model.buffers():
        dist.broadcast(buf, src)


def set_sampler_epoch(loader, epoch: int) -> None:
    """A DistributedSampler shuffles by epoch number: without this every epoch has one order."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


def strip_ddp_prefix(state: dict) -> dict:
    """``state`` without the ``module.`` prefix DataParallel / DistributedDataParallel put on
    every key, so a wrapped model's state_dict loads into the bare model. In place (torch's
    ``consume_prefix_in_state_dict_if_present``); returned for convenience."""
    consume_prefix_in_state_dict_if_present(state, "module.")
    return state
