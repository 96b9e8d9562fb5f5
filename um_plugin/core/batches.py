"""One reader for the two batch shapes users have: ``(x, y)`` tuples and OpenOOD dicts."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def unpack_batch(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(inputs, labels)`` from ``(x, y, ...)`` or ``{'data': x, 'label': y, ...}``."""
    if isinstance(batch, Mapping):
        missing = [k for k in ("data", "label") if k not in batch]
        if missing:
            raise TypeError(
                f"dict batch lacks {missing}; it has keys {sorted(map(str, batch))}, "
                "expected OpenOOD-style {'data': inputs, 'label': labels}")
        x, y = batch["data"], batch["label"]
    elif isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)) and len(batch) >= 2:
        x, y = batch[0], batch[1]
    else:
        raise TypeError(
            f"batch of type {type(batch).__name__} is neither an (inputs, labels) pair nor a "
            "dict with 'data' and 'label'")
    for name, value in (("inputs", x), ("labels", y)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"batch {name} must be a torch.Tensor, got {type(value).__name__}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"batch has {x.shape[0] if x.dim() else 0} inputs but labels of shape "
            f"{tuple(y.shape)}; expected one integer label per input")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got dtype {y.dtype}")
    return x, y


def batch_indices(batch, start: int, size: int) -> torch.Tensor:
    """Dataset indices of a batch: its ``'index'`` entry if given, else loader positions."""
    if isinstance(batch, Mapping) and isinstance(batch.get("index"), torch.Tensor):
        return batch["index"].detach().cpu().long().view(-1)
    return torch.arange(start, start + size)
