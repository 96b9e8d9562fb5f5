"""The UM loss constraint: ``|beta * CE - xi| + xi`` (flooding at level xi).

Once the batch loss falls below xi the sign of the gradient flips, so the model stops
fitting (and "forgets") the atypical samples it memorised late in training.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import validate_beta, validate_xi


def constrain(loss: torch.Tensor, xi: float, beta: float = 1.0) -> torch.Tensor:
    """Apply the constraint to an already reduced loss: ``|beta * loss - xi| + xi``."""
    return (beta * loss - xi).abs() + xi


class LossConstraint(nn.Module):
    """Cross-entropy under the UM loss constraint, as the official ``CustomLoss``."""

    def __init__(self, xi: float, beta: float = 1.0):
        super().__init__()
        self.xi = xi
        self.beta = beta

    xi = property(lambda self: self._xi,
                  lambda self, value: setattr(self, "_xi", validate_xi(value)),
                  doc="The loss constraint, checked by validate_xi on every assignment.")
    beta = property(lambda self: self._beta,
                    lambda self, value: setattr(self, "_beta", validate_beta(value)),
                    doc="The loss scale, checked by validate_beta on every assignment.")

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return constrain(F.cross_entropy(logits, targets), self._xi, self._beta)

    def extra_repr(self) -> str:
        return f"xi={self._xi:.6g}, beta={self._beta:.6g}"
