"""The masked weight ``weight * mask`` and its popup (straight-through) gradient.

The gradient of the masked weight reaches ``weight`` through the mask, and ``scores``
straight through the top-k: ``grad * weight * sign(scores)`` (the sign is the slope of the
ranked ``|scores|``, :class:`.topk.Magnitude`), as the official ``GetSubnet`` does.
Gradients come back in each input's own dtype, so mixed dtypes and autocast work.
"""
from __future__ import annotations

import torch


class SlopeBuffer:
    """The ranking's slope at the scores (``sign(scores)`` for ``|scores|``), written into
    memory reused across layers and steps (per device, dtype).

    A fresh tensor per layer and step would cost the allocator a large block each time; the
    buffer's view shaped like each layer is kept too, so a step creates no view either.
    """

    def __init__(self, importance):
        self.importance = importance
        self._bufs: dict = {}  # (device, dtype) -> flat buffer
        self._views: dict = {}  # (device, dtype, shape) -> view of that buffer

    def of(self, scores: torch.Tensor) -> torch.Tensor:
        key = (scores.device, scores.dtype, scores.shape)
        view = self._views.get(key)
        if view is None:
            view = self._views[key] = self._grow(scores)
        return self.importance.slope(scores.detach(), out=view)

    def _grow(self, scores: torch.Tensor) -> torch.Tensor:
        key, n = (scores.device, scores.dtype), scores.numel()
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < n:
            self._bufs[key] = buf = torch.empty(n, dtype=scores.dtype, device=scores.device)
            self._views = {k: v for k, v in self._views.items() if k[:2] != key}  # old buffer
        return buf[:n].view(scores.shape)


class _MaskedWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, scores, mask, slope: "SlopeBuffer"):
        if mask.dtype != weight.dtype:
            mask = mask.to(weight.dtype)
        ctx.save_for_backward(weight, scores, mask)
        ctx.slope = slope
        return weight * mask

    @staticmethod
    def backward(ctx, grad):
        weight, scores, mask = ctx.saved_tensors
        needs_weight, needs_scores = ctx.needs_input_grad[:2]
        grad_weight = (grad * mask).to(weight.dtype) if needs_weight else None
        grad_scores = None
        if needs_scores:
            grad_scores = grad * weight
            if grad_scores.dtype != scores.dtype:
                grad_scores = grad_scores.to(scores.dtype)
            grad_scores.mul_(ctx.slope.of(scores))  # sign: ±1 or 0, exact, in place
        return grad_weight, grad_scores, None, None


def masked_weight(weight: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor,
                  slope: SlopeBuffer) -> torch.Tensor:
    """``weight * mask``, differentiable in ``weight`` and (straight through) in ``scores``."""
    return _MaskedWeight.apply(weight, scores, mask, slope)
