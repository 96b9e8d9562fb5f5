"""The UM loss constraint: ``|beta * CE - xi| + xi`` (flooding at level xi).

Once the batch loss falls below xi the sign of the gradient flips, so the model stops
fitting (and "forgets") the atypical samples it memorised late in training.
"""
from __future__ import annotations

import math
from numbers import Real

import torch
import torch.nn.functional as F
from torch import nn


# The loss is float32 (autocast computes cross-entropy in float32 too): with xi above half its
# largest value, |beta * CE - xi| + xi overflows to inf, so no step could ever be taken.
XI_MAX = float(torch.finfo(torch.float32).max) / 2


def _finite_number(value, name: str, rule: str, ok) -> float:
    if isinstance(value, torch.Tensor) and (value.numel() != 1 or value.dtype == torch.bool
                                            or value.dtype.is_complex):
        shown = f" {value.tolist()}" if value.numel() <= 8 else ""
        raise ValueError(f"{name} must be a single finite number {rule}, got a {value.dtype} "
                         f"tensor of shape {tuple(value.shape)}{shown}")
    if isinstance(value, bool) or not isinstance(value, (Real, torch.Tensor)):
        raise ValueError(f"{name} must be a finite number {rule}, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or not ok(number):
        raise ValueError(f"{name} must be a finite number {rule}, got {number!r}")
    return number


def validate_xi(xi) -> float:
    """Return ``xi`` as a float, or raise naming it: a finite number in ``[0, XI_MAX]``.

    ``XI_MAX`` (about 1.7e38) is half of float32's largest value: beyond it the objective
    ``|beta * CE - xi| + xi``, computed in float32, is inf whatever the model does.
    """
    return _finite_number(xi, "loss constraint xi",
                          f">= 0 and <= {XI_MAX:.4g} (beyond that the float32 loss "
                          "|beta*CE - xi| + xi overflows)", lambda v: 0 <= v <= XI_MAX)


def validate_beta(beta) -> float:
    """Return ``beta`` as a float, or raise naming it: beta must be a finite number > 0."""
    return _finite_number(beta, "loss scale beta", "> 0", lambda v: v > 0)


def constrain(loss: torch.Tensor, xi: float, beta: float = 1.0) -> torch.Tensor:
    """Apply the constraint to an already reduced loss: ``|beta * loss - xi| + xi``."""
    return (beta * loss - xi).abs() + xi


class LossConstraint(nn.Module):
    """Cross-entropy under the UM loss constraint, as the official ``CustomLoss``."""

    def __init__(self, xi: float, beta: float = 1.0):
        super().__init__()
        self.xi = xi
        self.beta = beta

    @property
    def xi(self) -> float:
        return self._xi

    @xi.setter
    def xi(self, value) -> None:
        self._xi = validate_xi(value)

    @property
    def beta(self) -> float:
        return self._beta

    @beta.setter
    def beta(self, value) -> None:
        self._beta = validate_beta(value)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return constrain(F.cross_entropy(logits, targets), self._xi, self._beta)

    def extra_repr(self) -> str:
        return f"xi={self._xi:.6g}, beta={self._beta:.6g}"
