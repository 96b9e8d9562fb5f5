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


def checked_logits(out, size: int, model) -> torch.Tensor:
    """``out`` if it is the ``(batch, classes)`` logits of a batch of ``size``, else raise."""
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != size:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{type(model).__name__} must return (batch, classes) logits, got "
                         f"{shape} for a batch of {size}")
    return out


def valid_labels(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Which labels are class indices of a model with ``classes`` outputs (a bool tensor)."""
    return (labels >= 0) & (labels < classes)


def label_rule(classes: int | None) -> str:
    """The label rule in words; ``None``: the number of classes is not known here."""
    span = f"in [0, {classes - 1}] for a model with {classes} outputs" if classes else \
        "of the model's outputs"
    return f"must be class indices {span}"


def label_error(classes: int | None, got: str, where: str = "") -> ValueError:
    """The one error for labels outside the classes; ``got`` says what was found."""
    return ValueError(f"labels{where} {label_rule(classes)}, got {got} (-100, PyTorch's "
                      "ignore_index, is refused too: every sample must count in the loss)")


def check_labels(labels: torch.Tensor, classes: int, where: str = "") -> None:
    """Raise :func:`label_error` unless every label is a class index (reads two numbers: a
    host-device synchronisation off the CPU)."""
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= classes:
        raise label_error(classes, f"labels in [{low}, {high}]", where)
