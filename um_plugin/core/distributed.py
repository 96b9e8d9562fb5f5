"""The few torch.distributed facts the method needs, safe when it is not initialised."""
from __future__ import annotations

import torch
import torch.distributed as dist
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


def strip_ddp_prefix(state: dict) -> dict:
    """``state`` without the ``module.`` prefix DataParallel / DistributedDataParallel put on
    every key, so a wrapped model's state_dict loads into the bare model. In place (torch's
    ``consume_prefix_in_state_dict_if_present``); returned for convenience."""
    consume_prefix_in_state_dict_if_present(state, "module.")
    return state
