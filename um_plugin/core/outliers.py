"""Losses on auxiliary outliers, added to UM's constrained ID loss: the authors' whole method.

The authors' ``main_OE.py`` (``NeuralLinear.train_oe``) and OpenOOD's ``oe`` trainer run one
forward over an ID batch and an outlier batch concatenated (so BatchNorm's statistics see both)
and add to the ID loss either

- outlier exposure (Hendrycks et al.): ``lambda_oe * -(out.mean(1) - logsumexp(out, 1)).mean()``,
  the cross-entropy of the outliers' logits to the uniform distribution; or
- the energy margins (Liu et al.): with ``E = -logsumexp(logits, 1)``,
  ``energy_beta * (relu(m_out - E_out)^2.mean() + relu(E_in - m_in)^2.mean())``.

Each is a plain ``nn.Module`` taking ``(id_logits, outlier_logits)``; the engine
(``Finetuner``) calls the one its ``FinetuneConfig.outlier_loss`` names, on the logits of the
concatenated forward. The expressions are the authors' term for term, so the sums round alike.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import FinetuneConfig


class OutlierExposureLoss(nn.Module):
    """``weight * -(out.mean(1) - logsumexp(out, 1)).mean()``; the ID logits are not used."""

    def __init__(self, weight: float = 0.5):
        super().__init__()
        self.weight = weight

    def forward(self, id_logits: torch.Tensor, outlier_logits: torch.Tensor) -> torch.Tensor:
        return self.weight * -(outlier_logits.mean(1)
                               - torch.logsumexp(outlier_logits, dim=1)).mean()

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}"


class EnergyMarginLoss(nn.Module):
    """Squared hinges pushing ID energies below ``m_in`` and outlier energies above ``m_out``."""

    def __init__(self, m_in: float = -25.0, m_out: float = -7.0, weight: float = 0.1):
        super().__init__()
        self.m_in, self.m_out, self.weight = m_in, m_out, weight

    def forward(self, id_logits: torch.Tensor, outlier_logits: torch.Tensor) -> torch.Tensor:
        energy_in = -torch.logsumexp(id_logits, dim=1)
        energy_out = -torch.logsumexp(outlier_logits, dim=1)
        loss_in = torch.pow(F.relu(energy_in - self.m_in), 2).mean()
        loss_out = torch.pow(F.relu(self.m_out - energy_out), 2).mean()
        return self.weight * (loss_out + loss_in)

    def extra_repr(self) -> str:
        return f"m_in={self.m_in:g}, m_out={self.m_out:g}, weight={self.weight:g}"


def outlier_objective(config: FinetuneConfig) -> Optional[nn.Module]:
    """The outlier loss ``config`` names, or None for ``outlier_loss='none'``."""
    if config.outlier_loss == "oe":
        return OutlierExposureLoss(config.lambda_oe)
    if config.outlier_loss == "energy":
        return EnergyMarginLoss(config.m_in, config.m_out, config.energy_beta)
    return None


def outlier_inputs(batch) -> torch.Tensor:
    """The images of an outlier batch: a tensor, ``(x, ...)`` or OpenOOD's ``{'data': x}``
    (outliers' labels, e.g. OpenOOD's -1, are never read)."""
    x = batch
    if isinstance(batch, Mapping):
        if "data" not in batch:
            raise TypeError(f"an outlier dict batch needs a 'data' entry; it has keys "
                            f"{sorted(map(str, batch))}")
        x = batch["data"]
    elif isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)) and len(batch) >= 1:
        x = batch[0]
    if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[0] == 0:
        raise TypeError(f"an outlier batch must hold a non-empty tensor of inputs (a tensor, "
                        f"(inputs, ...) or {{'data': inputs}}), got {type(x).__name__}")
    return x


class OutlierStream:
    """Outlier batches for one epoch, cycled when the outlier loader is shorter than the ID one
    (OpenOOD's ``oe`` trainer). Its iterator is made when the epoch's ID iterator is, so a
    shuffle drawn from the global RNG comes in the order ``zip(id_loader, outlier_loader)``
    (the authors' loop) draws it; with as many outlier batches as ID ones the two are alike."""

    def __init__(self, loader):
        self.loader = loader
        self._it = iter(loader)

    def next(self) -> torch.Tensor:
        try:
            return outlier_inputs(next(self._it))
        except StopIteration:
            self._it = iter(self.loader)
            try:
                return outlier_inputs(next(self._it))
            except StopIteration:
                raise ValueError("the outlier loader is empty (0 batches); outlier_loss "
                                 "needs auxiliary outlier data") from None
