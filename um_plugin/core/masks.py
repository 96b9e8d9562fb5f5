"""Popup score masks over weights, attached with ``torch.nn.utils.parametrize``.

A mask never replaces a module or changes its class: each selected ``weight`` becomes a
parametrization ``weight = original * topk(|scores|)``, so forward kwargs, hooks and helper
methods of the model keep working, and :func:`bake_masks` leaves a plain model whose
``state_dict`` loads into a fresh instance of its class.

Rounding follows the official code (``GetSubnet``): of ``n`` weights, ``int((1 - k) * n)``
with the smallest ``|score|`` are dropped, so ``n - int((1 - k) * n)`` are kept.
"""
from __future__ import annotations

import contextlib
import math
from numbers import Real
from typing import Iterable, Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

MASKABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)
THRESHOLDS = ("layer", "global")


def validate_keep_ratio(keep_ratio) -> float:
    """Return the keep ratio as a float, or raise naming it: it must lie in (0, 1]."""
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, Real):
        raise ValueError(f"keep_ratio must be a number in (0, 1], got {keep_ratio!r}")
    value = float(keep_ratio)
    if not (0.0 < value <= 1.0):
        raise ValueError(f"keep_ratio must be in (0, 1] (fraction of weights kept), got {value!r}")
    return value


def num_kept(numel: int, keep_ratio: float) -> int:
    """How many of ``numel`` weights a mask keeps, rounded as the official code does."""
    return numel - int((1 - keep_ratio) * numel)


def topk_mask_(mask: torch.Tensor, scores: torch.Tensor, keep: int,
               scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Fill ``mask`` with 1 at the ``keep`` largest ``|scores|`` and 0 elsewhere, in place.

    One ``kthvalue`` finds the threshold and one comparison writes the mask: no sort, no
    per-step allocation when a ``scratch`` buffer is given. Equal to the full-sort mask; if
    ties at the threshold would keep too many (a measure-zero event for real-valued scores,
    checked on the CPU only, where the check costs no device sync), a ``topk`` picks exactly.
    """
    numel = scores.numel()
    drop = numel - keep
    out = mask.view(-1)
    if drop == 0:
        return mask.fill_(1)
    flat = scores.detach().view(-1)
    magnitude = torch.abs(flat, out=scratch.view(-1)[:numel]) if scratch is not None else flat.abs()
    threshold = torch.kthvalue(magnitude, drop).values
    torch.gt(magnitude, threshold, out=out)
    if out.device.type == "cpu" and int(out.sum()) != keep:
        idx = torch.topk(magnitude, keep, sorted=False).indices
        out.zero_().index_fill_(0, idx, 1)
    return mask


def sorted_reference_mask(scores: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """The official full-sort mask, kept as the reference the fast path is tested against."""
    flat = scores.detach().abs().flatten()
    out = torch.empty_like(flat)
    idx = flat.sort().indices
    j = int((1 - keep_ratio) * flat.numel())
    out[idx[:j]] = 0
    out[idx[j:]] = 1
    return out.view_as(scores)


class _MaskedWeight(torch.autograd.Function):
    """``weight * mask`` with the popup straight-through gradient to the scores.

    One fused op: the gradient of the masked weight reaches ``weight`` through the mask and
    ``scores`` straight through the top-k (times ``weight``, and the sign from ``|scores|``).
    """

    @staticmethod
    def forward(ctx, weight, scores, mask):
        ctx.save_for_backward(weight, scores, mask)
        return weight * mask

    @staticmethod
    def backward(ctx, grad):
        weight, scores, mask = ctx.saved_tensors
        grad_weight = grad * mask if ctx.needs_input_grad[0] else None
        grad_scores = None
        if ctx.needs_input_grad[1]:
            grad_scores = grad * weight
            grad_scores.mul_(scores.sign())
        return grad_weight, grad_scores, None


class _MaskGroup:
    """The masks of one model; recomputes every stale mask in one pass per score update."""

    def __init__(self, keep_ratio: float, threshold: str):
        self.keep_ratio = keep_ratio
        self.threshold = threshold
        self.members: list[ScoreMask] = []
        self._seen: tuple | None = None
        self._scratch: torch.Tensor | None = None

    def _state(self) -> tuple:
        return tuple((m.scores.data_ptr(), m.scores._version) for m in self.members)

    def _scratch_for(self, numel: int) -> torch.Tensor:
        ref = self.members[0].scores
        s = self._scratch
        if s is None or s.numel() < numel or s.device != ref.device or s.dtype != ref.dtype:
            self._scratch = s = torch.empty(numel, device=ref.device, dtype=ref.dtype)
        return s

    def refresh(self) -> None:
        state = self._state()
        if state == self._seen:
            return
        with torch.no_grad():
            if self.threshold == "layer":
                scratch = self._scratch_for(max(m.scores.numel() for m in self.members))
                for m in self.members:
                    topk_mask_(m.mask, m.scores, num_kept(m.scores.numel(), self.keep_ratio),
                               scratch)
            else:
                scores = torch.cat([m.scores.detach().view(-1) for m in self.members])
                flat_mask = torch.empty_like(scores)
                topk_mask_(flat_mask, scores, num_kept(scores.numel(), self.keep_ratio), scores)
                offset = 0
                for m in self.members:
                    n = m.mask.numel()
                    m.mask.copy_(flat_mask[offset:offset + n].view_as(m.mask))
                    offset += n
        self._seen = self._state()


class ScoreMask(nn.Module):
    """Parametrization ``weight -> weight * topk(|scores|)`` with learnable popup scores."""

    def __init__(self, weight: torch.Tensor, group: _MaskGroup, generator: torch.Generator | None):
        super().__init__()
        scores = torch.empty(weight.shape, dtype=weight.dtype)
        # Initialised on the CPU so that one seed gives one mask on every device.
        nn.init.kaiming_uniform_(scores, a=math.sqrt(5), generator=generator)
        self.scores = nn.Parameter(scores.to(weight.device))
        self.register_buffer("mask", torch.ones_like(weight), persistent=False)
        self.group = group
        self.enabled = True

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        self.group.refresh()
        return _MaskedWeight.apply(weight, self.scores, self.mask)

    def extra_repr(self) -> str:
        return f"keep_ratio={self.group.keep_ratio}, threshold={self.group.threshold!r}"

    def __deepcopy__(self, memo):
        raise TypeError("a model with score masks cannot be deep-copied; bake_masks() it first")


def _selected_modules(model: nn.Module, include) -> list[tuple[str, nn.Module]]:
    maskable = [(n, m) for n, m in model.named_modules()
                if isinstance(m, MASKABLE_TYPES) and isinstance(getattr(m, "weight", None), torch.Tensor)]
    if include is None:
        chosen = maskable
    else:
        items = [include] if isinstance(include, (str, type)) else list(include)
        names = {i for i in items if isinstance(i, str)}
        types = tuple(i for i in items if isinstance(i, type))
        bad = [i for i in items if not isinstance(i, (str, type))]
        if bad:
            raise TypeError(f"include entries must be module names or nn.Module types, got {bad!r}")
        known = {n for n, _ in maskable}
        unknown = sorted(names - known)
        if unknown:
            raise ValueError(f"include names {unknown} are not Conv2d/Linear modules of "
                             f"{type(model).__name__}; maskable ones are {sorted(known)}")
        chosen = [(n, m) for n, m in maskable if n in names or (types and isinstance(m, types))]
    if not chosen:
        raise ValueError(f"{type(model).__name__} has no maskable layers "
                         f"(Conv2d/Linear with a weight) matching include={include!r}")
    return chosen


def iter_score_masks(model: nn.Module) -> Iterator[tuple[str, nn.Module, ScoreMask]]:
    """Yield ``(name, module, score_mask)`` for every masked weight of ``model``."""
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, ScoreMask):
                    yield name, module, p


def has_score_masks(model: nn.Module) -> bool:
    """Whether any weight of ``model`` carries a score mask."""
    return next(iter_score_masks(model), None) is not None


def attach_score_masks(model: nn.Module, keep_ratio: float, *, include=None,
                       threshold: str = "layer",
                       generator: torch.Generator | None = None) -> list[str]:
    """Mask the weights of ``model``'s Conv2d/Linear layers in place; return their names.

    ``include`` picks layers by module name and/or type (default: all). ``threshold`` is
    ``'layer'`` (top-k per layer, the official default) or ``'global'`` (one top-k over all).
    Scores are kaiming-uniform as in the official code; pass a seeded ``generator`` to make
    the mask reproducible.
    """
    keep_ratio = validate_keep_ratio(keep_ratio)
    if threshold not in THRESHOLDS:
        raise ValueError(f"threshold must be one of {THRESHOLDS}, got {threshold!r}")
    if has_score_masks(model):
        raise RuntimeError(f"{type(model).__name__} already has score masks; call bake_masks() "
                           "or remove_score_masks() before masking it again")
    chosen = _selected_modules(model, include)
    group = _MaskGroup(keep_ratio, threshold)
    for _, module in chosen:
        mask = ScoreMask(module.weight.detach(), group, generator)
        group.members.append(mask)
        parametrize.register_parametrization(module, "weight", mask, unsafe=True)
    return [n for n, _ in chosen]


def score_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learnable scores of every mask on ``model``."""
    return [m.scores for _, _, m in iter_score_masks(model)]


def freeze_weights(model: nn.Module) -> list[tuple[nn.Parameter, bool]]:
    """Make every parameter but the mask scores untrainable; return the previous flags."""
    scores = {id(p) for p in score_parameters(model)}
    previous = [(p, p.requires_grad) for p in model.parameters() if id(p) not in scores]
    for p, _ in previous:
        p.requires_grad_(False)
    return previous


def restore_requires_grad(flags: list[tuple[nn.Parameter, bool]]) -> None:
    """Undo :func:`freeze_weights` (baking keeps the parameter objects, so this still works)."""
    for p, flag in flags:
        p.requires_grad_(flag)


def _remove(model: nn.Module, bake: bool) -> nn.Module:
    modules = {id(module): module for _, module, _ in iter_score_masks(model)}
    if not modules:
        raise ValueError(f"{type(model).__name__} has no score masks to remove")
    with torch.no_grad():
        for module in modules.values():
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=bake)
    return model


def bake_masks(model: nn.Module) -> nn.Module:
    """Fold every mask into its weight and drop all masking machinery; return ``model``."""
    return _remove(model, bake=True)


def remove_score_masks(model: nn.Module) -> nn.Module:
    """Drop every mask and give the layers back their original, unmasked weights."""
    return _remove(model, bake=False)


@contextlib.contextmanager
def masks_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` as if unmasked, without detaching its masks."""
    masks = [m for _, _, m in iter_score_masks(model)]
    previous = [m.enabled for m in masks]
    for m in masks:
        m.enabled = False
    try:
        yield model
    finally:
        for m, flag in zip(masks, previous):
            m.enabled = flag


@contextlib.contextmanager
def random_score_mask(model: nn.Module, keep_ratio: float, *, include=None,
                      threshold: str = "layer",
                      generator: torch.Generator | None = None) -> Iterator[nn.Module]:
    """Attach a random mask for the duration of a block; the model comes back unmasked."""
    attach_score_masks(model, keep_ratio, include=include, threshold=threshold, generator=generator)
    try:
        yield model
    finally:
        remove_score_masks(model)


def mask_density(model: nn.Module) -> dict[str, float]:
    """Fraction of weights each mask keeps, by module name (for reports and tests)."""
    out = {}
    for name, module, m in iter_score_masks(model):
        m.group.refresh()
        out[name] = float(m.mask.sum() / m.mask.numel())
    return out
