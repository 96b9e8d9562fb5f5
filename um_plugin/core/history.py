"""The per-epoch record of a fine-tuning run (saved in its checkpoints)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class History:
    """Per-epoch mean loss, accuracy, ξ and final lr of a fine-tuning run."""

    epoch: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    acc: list[float] = field(default_factory=list)
    xi: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)

    def append(self, epoch: int, loss: float, acc: float, xi: float, lr: float) -> None:
        for name, value in zip(("epoch", "loss", "acc", "xi", "lr"), (epoch, loss, acc, xi, lr)):
            getattr(self, name).append(value)
