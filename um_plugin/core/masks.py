"""Popup score masks over weights, attached with ``torch.nn.utils.parametrize``.

A mask never replaces a module or changes its class: each selected ``weight`` becomes a
parametrization ``weight = original * topk(|scores|)``, so forward kwargs, hooks and helper
methods of the model keep working, and :func:`bake_masks` leaves a plain model whose
``state_dict`` (keys and their order) loads into a fresh instance of its class.

Rounding follows the official code (``GetSubnet``): of ``n`` weights, ``int((1 - k) * n)``
with the smallest ``|score|`` are dropped, so ``n - int((1 - k) * n)`` are kept.

Tie rule: the mask is exactly the one a *stable* ascending sort of ``|scores|`` gives (the
official code with ``sort(stable=True)``, :func:`sorted_reference_mask`): among weights whose
``|score|`` equals the threshold, the lower flat indices are dropped first, so the kept ones
are the tied weights with the highest indices. Every device and dtype gives the same mask.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from numbers import Real
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

MASKABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)
THRESHOLDS = ("layer", "global")

_ROW = 128  # magnitudes per row when the CPU path looks for the threshold's neighbours
_HINT_TRIES = 3  # band widenings around the last threshold before an exact kthvalue
_HINT_MIN = 1 << 16  # smaller selections go straight to kthvalue: fewer ops, less overhead
_SAMPLE = 1 << 14  # strided sample that brackets the threshold when there is no last one
_NARROW = 1 << 13  # a bracket holding more entries is narrowed before they are extracted
_SORT_MIN = 100_000  # off the CPU, from this size on one sort beats kthvalue's single block


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


class TopKSelector:
    """Exact top-k ``|score|`` masks with reused buffers; see the module docstring for ties.

    Two paths give the same mask. On a CUDA/other device (or with ``sync_free=True``) the
    mask is built from tensor ops only: no host-device synchronisation. Large selections
    take one stable radix sort (torch's own ``topk`` prefers a sort for one slice this
    large: ``kthvalue`` runs one thread block per slice), smaller ones ``kthvalue`` and one
    ``cumsum`` for the ties. On the CPU, where reading a count costs nothing, the last threshold of
    the same ``key`` is reused: scores move little per step, so the new threshold is found by
    counting around the old one and selecting among its few neighbours, falling back to an
    exact ``kthvalue`` when the neighbourhood misses. ``sync_free=False`` forces that path.
    """

    def __init__(self, sync_free: bool | None = None):
        if sync_free not in (None, True, False):
            raise ValueError(f"sync_free must be None (auto), True or False, got {sync_free!r}")
        self.sync_free = sync_free
        self._mag: torch.Tensor | None = None
        self._ind: torch.Tensor | None = None
        self._hints: dict = {}

    def _buffers(self, padded: int, like: torch.Tensor, counts: bool):
        """Magnitudes (``like``'s dtype) and, for the CPU path, float32 indicators to count."""
        mag, ind = self._mag, self._ind
        if (mag is None or mag.numel() < padded or mag.device != like.device
                or mag.dtype != like.dtype):
            self._mag = mag = torch.empty(padded, device=like.device, dtype=like.dtype)
            self._ind = ind = None
        if counts and (ind is None or ind.numel() < padded):
            self._ind = ind = torch.empty(padded, device=like.device, dtype=torch.float32)
        return mag, ind

    def select_(self, masks: Sequence[torch.Tensor], scores: Sequence[torch.Tensor], keep: int,
                key=0) -> None:
        """Fill ``masks`` with 1 at the ``keep`` largest ``|score|`` over all of ``scores``.

        One threshold over the concatenation (pass one pair for a per-layer mask); ``key``
        names the threshold whose previous value the CPU path may reuse.
        """
        sizes = [s.numel() for s in scores]
        if len(masks) != len(scores) or any(
                m.numel() != size or not m.is_contiguous() for m, size in zip(masks, sizes)):
            raise ValueError("each mask must be a contiguous tensor shaped like its scores, got "
                             f"masks {[tuple(m.shape) for m in masks]} for scores "
                             f"{[tuple(s.shape) for s in scores]}")
        n = sum(sizes)
        if not 0 <= keep <= n:
            raise ValueError(f"keep must be in [0, {n}], got {keep!r}")
        if keep == n:
            for m in masks:
                m.fill_(1)
            return
        if keep == 0:
            for m in masks:
                m.zero_()
            return
        first = scores[0]
        sync_free = self.sync_free if self.sync_free is not None else first.device.type != "cpu"
        padded = -(-n // _ROW) * _ROW
        mag, ind = self._buffers(padded, first, counts=not sync_free)
        offset = 0
        with torch.no_grad():
            for s, size in zip(scores, sizes):
                torch.abs(s.detach().reshape(-1), out=mag[offset:offset + size])
                offset += size
            # a NaN score ranks with the largest, as in the sort (and the count stays exact)
            torch.nan_to_num_(mag[:n], nan=math.inf, posinf=math.inf)
            mag[n:padded].fill_(math.inf)  # padding is never below a finite threshold
            drop = n - keep
            if sync_free and n >= _SORT_MIN:
                kept = torch.sort(mag[:n], stable=True).indices[drop:]
                flat = masks[0].view(-1) if len(masks) == 1 else _flat_like(n, masks[0])
                flat.zero_().index_fill_(0, kept, 1)
                if len(masks) > 1:
                    _split_into(flat, masks)
                return
            if sync_free:
                t, extra = _threshold_sync_free(mag[:n], drop)
            else:
                t, extra, hint = _threshold_host(mag[:padded].view(-1, _ROW),
                                                 ind[:padded].view(-1, _ROW), n, drop,
                                                 self._hints.get(key))
                self._hints[key] = hint
            offset = 0
            for m, size in zip(masks, sizes):
                out = m.view(-1)
                torch.gt(mag[offset:offset + size], t, out=out)
                if sync_free:
                    out.masked_fill_(extra[offset:offset + size], 1)
                elif extra is not None:
                    local = extra[(extra >= offset) & (extra < offset + size)] - offset
                    if local.numel():
                        out.index_fill_(0, local, 1)
                offset += size


def _flat_like(n: int, mask: torch.Tensor) -> torch.Tensor:
    """A flat temporary mask for several tensors at once."""
    return torch.empty(n, dtype=mask.dtype, device=mask.device)


def _split_into(flat: torch.Tensor, masks: Sequence[torch.Tensor]) -> None:
    offset = 0
    for m in masks:
        m.view(-1).copy_(flat[offset:offset + m.numel()])
        offset += m.numel()


def _threshold_sync_free(mag: torch.Tensor, drop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Threshold and the tied entries kept, from tensor ops only (no host sync)."""
    t = torch.kthvalue(mag, drop).values
    tied = mag == t
    below = torch.count_nonzero(mag < t)
    # the first ``drop - below`` tied entries (by index) are dropped, the rest kept
    return t, tied & (tied.cumsum(0) > drop - below)


def _threshold_host(mag2d: torch.Tensor, ind2d: torch.Tensor, n: int, drop: int, hint):
    """Threshold, kept tied positions and the next hint, using host counts (CPU)."""
    flat = mag2d.view(-1)[:n]
    if n >= _HINT_MIN:
        if hint is not None:
            for i in range(_HINT_TRIES):
                found = _threshold_near(mag2d, ind2d, drop, hint[0], hint[1] * 16 ** i)
                if found is not None:
                    return _with_hint(*found, moved=abs(float(found[0]) - hint[0]))
        else:
            found = _threshold_sampled(mag2d, ind2d, n, drop)
            if found is not None:
                return _with_hint(*found, moved=0.0)
    t = torch.kthvalue(flat, drop).values
    value = float(t)
    return t, _kept_ties(flat, t, drop), (value, max(abs(value) * 2 ** -10, 1e-30))


def _with_hint(t, extra, moved):
    value = float(t)
    return t, extra, (value, max(2 * moved, abs(value) * 2 ** -12, 1e-30))


def _threshold_sampled(mag2d, ind2d, n, drop):
    """No last threshold: bracket it from a strided sample, then narrow by interpolation."""
    flat = mag2d.view(-1)[:n]
    sample = flat[::max(1, n // _SAMPLE)]
    m, q = sample.numel(), drop / n
    spread = 6 * math.sqrt(m * q * (1 - q)) + 2
    lo = float(torch.kthvalue(sample, max(1, math.floor(q * m - spread))).values)
    hi = float(torch.kthvalue(sample, min(m, math.ceil(q * m + spread))).values)
    centre, width = (lo + hi) / 2, (hi - lo) / 2
    found = _threshold_near(mag2d, ind2d, drop, centre, width, max_band=_NARROW)
    if isinstance(found, _Counts):  # right bracket, too many entries in it to extract cheaply:
        below, upto = found  # place the threshold by its rank, as if spread evenly inside
        inside, rank = upto - below, drop - below
        frac = rank / inside
        margin = (6 * math.sqrt(inside * frac * (1 - frac)) + 16) / inside
        guess = centre - width + 2 * width * frac
        ulp = abs(guess) * torch.finfo(mag2d.dtype).eps  # coarse dtypes: ties fill whole ulps
        narrow = _threshold_near(mag2d, ind2d, drop, guess, max(2 * width * margin, 2 * ulp))
        found = narrow or _threshold_near(mag2d, ind2d, drop, centre, width)
    return found


class _Counts(tuple):
    """(entries below the bracket, entries up to its top) when the bracket was too wide."""


def _threshold_near(mag2d, ind2d, drop, centre, width, max_band=None):
    """The exact threshold if it lies within ``centre ± width``, else None.

    With ``max_band``, a bracket holding more entries returns its :class:`_Counts` instead.
    """
    lo, hi = centre - width, centre + width
    if not (math.isfinite(lo) and math.isfinite(hi)) or abs(hi) >= torch.finfo(mag2d.dtype).max:
        return None
    # Python-number bounds round to the magnitudes' dtype alike in every comparison below,
    # so the counts and the band describe one consistent partition.
    torch.lt(mag2d, lo, out=ind2d)
    rows_lo = ind2d.sum(1)  # float32 row counts are exact (a row has _ROW entries)
    below_lo = int(rows_lo.sum(dtype=torch.float64))
    if below_lo >= drop:
        return None
    torch.le(mag2d, hi, out=ind2d)
    rows_hi = ind2d.sum(1)
    upto_hi = int(rows_hi.sum(dtype=torch.float64))
    if upto_hi < drop:
        return None
    if max_band is not None and upto_hi - below_lo > max_band:
        return _Counts((below_lo, upto_hi))
    rows = torch.nonzero(rows_hi != rows_lo).view(-1)
    near = mag2d.index_select(0, rows)  # every entry within [lo, hi], with row neighbours
    band = near[(near >= lo) & (near <= hi)]
    t = torch.kthvalue(band, drop - below_lo).values
    kept_ties = below_lo + int(torch.count_nonzero(band <= t)) - drop
    if kept_ties == 0:
        return t, None
    tied = torch.nonzero(near.view(-1) == t).view(-1)
    row = mag2d.shape[1]
    tied = rows[tied // row] * row + tied % row
    return t, tied[tied.numel() - kept_ties:]


def _kept_ties(flat: torch.Tensor, t: torch.Tensor, drop: int) -> torch.Tensor | None:
    """Positions of the tied entries kept: the last ``#(<= t) - drop`` equal to ``t``."""
    kept = int(torch.count_nonzero(flat <= t)) - drop
    if kept == 0:
        return None
    tied = torch.nonzero(flat == t).view(-1)
    return tied[tied.numel() - kept:]


def topk_mask_(mask: torch.Tensor, scores: torch.Tensor, keep: int,
               selector: TopKSelector | None = None) -> torch.Tensor:
    """Fill ``mask`` with 1 at the ``keep`` largest ``|scores|`` and 0 elsewhere, in place.

    Equal to :func:`sorted_reference_mask` (ties as in the module docstring) on every device
    and dtype, without a host sync off the CPU. Pass a :class:`TopKSelector` to reuse its
    buffers and, on the CPU, its last threshold across calls.
    """
    (selector or TopKSelector()).select_([mask], [scores], keep)
    return mask


def sorted_reference_mask(scores: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """The official full-sort mask (stable sort), the reference the fast path is tested against."""
    flat = scores.detach().abs().flatten()
    out = torch.empty_like(flat)
    idx = flat.sort(stable=True).indices
    j = int((1 - keep_ratio) * flat.numel())
    out[idx[:j]] = 0
    out[idx[j:]] = 1
    return out.view_as(scores)


class _MaskedWeight(torch.autograd.Function):
    """``weight * mask`` with the popup straight-through gradient to the scores.

    One fused op: the gradient of the masked weight reaches ``weight`` through the mask and
    ``scores`` straight through the top-k (times ``weight``, and the sign from ``|scores|``).
    Gradients come back in each input's own dtype, so mixed dtypes and autocast work.
    """

    @staticmethod
    def forward(ctx, weight, scores, mask):
        mask = mask.to(weight.dtype)
        ctx.save_for_backward(weight, scores, mask)
        return weight * mask

    @staticmethod
    def backward(ctx, grad):
        weight, scores, mask = ctx.saved_tensors
        grad_weight = (grad * mask).to(weight.dtype) if ctx.needs_input_grad[0] else None
        grad_scores = None
        if ctx.needs_input_grad[1]:
            grad_scores = (grad * weight).to(scores.dtype)
            grad_scores.mul_(scores.sign())
        return grad_weight, grad_scores, None


class ScoreParameter(nn.Parameter):
    """The learnable scores of one mask; touching ``.data`` marks the mask stale.

    Autograd's version counter misses in-place edits made through ``.data`` (``p.data.copy_``,
    ``p.data[...] = ...``), so every read or write of ``.data`` counts as an edit and the next
    forward recomputes the mask. Edits through ``p.detach()`` or under ``torch.no_grad()``
    bump the version counter and are seen too. Only an alias kept from before a forward and
    edited after it (or a NumPy view) escapes: edit scores in place under ``no_grad`` instead.
    """

    @property
    def data(self):
        self._um_edits = getattr(self, "_um_edits", 0) + 1
        return torch._C.TensorBase.data.__get__(self)

    @data.setter
    def data(self, value):
        self._um_edits = getattr(self, "_um_edits", 0) + 1
        torch._C.TensorBase.data.__set__(self, value)


class _MaskGroup:
    """The masks of one model; recomputes a mask only when its scores changed.

    ``keep_ratio`` and ``threshold`` are public: callers compare them with their own config.
    Under per-layer thresholds a layer's forward checks and refreshes its own mask alone
    (constant Python work per layer); a global threshold refreshes all masks together.
    """

    def __init__(self, keep_ratio: float, threshold: str):
        self.keep_ratio = keep_ratio
        self.threshold = threshold
        self.members: list[ScoreMask] = []
        self.selector = TopKSelector()
        self._seen: tuple | None = None

    @staticmethod
    def _state_of(m: "ScoreMask") -> tuple:
        s = m.scores
        return s.data_ptr(), s._version, getattr(s, "_um_edits", 0), m.mask.data_ptr()

    def refresh(self, member: "ScoreMask | None" = None) -> None:
        """Recompute stale masks: only ``member``'s when thresholds are per layer, else all."""
        with torch.no_grad():
            if self.threshold == "layer":
                for m in (self.members if member is None else (member,)):
                    if self._state_of(m) != m.seen:
                        self.selector.select_([m.mask], [m.scores],
                                              num_kept(m.scores.numel(), self.keep_ratio),
                                              key=m.index)
                        m.seen = self._state_of(m)
                return
            state = tuple(self._state_of(m) for m in self.members)
            if state == self._seen:
                return
            total = sum(m.scores.numel() for m in self.members)
            self.selector.select_([m.mask for m in self.members],
                                  [m.scores for m in self.members],
                                  num_kept(total, self.keep_ratio))
            self._seen = tuple(self._state_of(m) for m in self.members)

    def mark_fresh(self) -> None:
        """Declare the masks right for the scores as they are (after restoring both together)."""
        for m in self.members:
            m.seen = self._state_of(m)
        self._seen = tuple(m.seen for m in self.members)


class ScoreMask(nn.Module):
    """Parametrization ``weight -> weight * topk(|scores|)`` with learnable popup scores."""

    def __init__(self, weight: torch.Tensor, group: _MaskGroup, generator: torch.Generator | None):
        super().__init__()
        scores = torch.empty(weight.shape, dtype=weight.dtype)
        # Initialised on the CPU so that one seed gives one mask on every device.
        nn.init.kaiming_uniform_(scores, a=math.sqrt(5), generator=generator)
        self.scores = ScoreParameter(scores.to(weight.device))
        self.register_buffer("mask", torch.ones_like(weight), persistent=False)
        self.group = group
        self.index = len(group.members)  # names this layer's threshold in the selector
        self.seen: tuple | None = None  # score state the mask was computed from
        self.enabled = True

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        self.group.refresh(self)
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


def mask_settings(model: nn.Module) -> tuple[float, str] | None:
    """``(keep_ratio, threshold)`` of ``model``'s score masks, or None when it has none."""
    entry = next(iter_score_masks(model), None)
    if entry is None:
        return None
    group = entry[2].group
    return group.keep_ratio, group.threshold


def attach_score_masks(model: nn.Module, keep_ratio: float, *, include=None,
                       threshold: str = "layer",
                       generator: torch.Generator | None = None) -> list[str]:
    """Mask the weights of ``model``'s Conv2d/Linear layers in place; return their names.

    ``include`` picks layers by module name and/or type (default: all). ``threshold`` is
    ``'layer'`` (top-k per layer, the official default) or ``'global'`` (one top-k over all).
    Scores are kaiming-uniform as in the official code; pass a seeded ``generator`` to make
    the mask reproducible. A weight shared by several layers gets one mask per layer, as in
    the official code (each layer applies its own).
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
        order = list(module._parameters)
        mask = ScoreMask(module.weight.detach(), group, generator)
        mask.parameter_order = order  # restored on removal: optimizers match state by position
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


def _reorder_parameters(module: nn.Module, order: list[str]) -> None:
    params = module._parameters
    items = [(k, params[k]) for k in order if k in params]
    items += [(k, v) for k, v in params.items() if k not in order]
    params.clear()
    params.update(items)


def _remove(model: nn.Module, bake: bool) -> nn.Module:
    entries: dict[int, tuple[str, nn.Module, ScoreMask]] = {}
    for name, module, m in iter_score_masks(model):
        entries.setdefault(id(module), (name, module, m))
    if not entries:
        raise ValueError(f"{type(model).__name__} has no score masks to remove")
    with torch.no_grad():
        baked = {key: module.weight for key, (_, module, _) in entries.items()} if bake else {}
        for _, module, _ in entries.values():
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        if bake:
            _write_baked(model, entries, baked)
        for _, module, m in entries.values():
            _reorder_parameters(module, m.parameter_order)
    return model


def _write_baked(model: nn.Module, entries: dict, baked: dict) -> None:
    """Write each layer's masked weight; a weight shared with another user is untied."""
    holders: dict[int, set] = {}
    for module in model.modules():
        for pname, p in module._parameters.items():
            if p is not None:
                holders.setdefault(id(p), set()).add((id(module), pname))
    untied, done = [], {}
    for key, (name, module, _) in entries.items():
        original, value = module.weight, baked[key]
        others = holders.get(id(original), set()) - {(key, "weight")}
        unmasked_user = any(pname != "weight" or mid not in entries for mid, pname in others)
        written = done.get(id(original))
        if written is None and not unmasked_user:
            original.copy_(value)
            done[id(original)] = value
        elif not torch.equal(value, original if written is None else written):
            param = nn.Parameter(value.detach().clone(), requires_grad=original.requires_grad)
            setattr(module, "weight", param)
            untied.append(name)
    if untied:
        warnings.warn(f"bake_masks: layers {untied} shared their weight with another layer but "
                      "had their own masks; each now holds its own masked weight (untied), "
                      "so the baked model computes exactly what the masked one did",
                      stacklevel=3)


def bake_masks(model: nn.Module) -> nn.Module:
    """Fold every mask into its weight and drop all masking machinery; return ``model``.

    The output is unchanged: a weight shared by several masked layers (or with an unmasked
    user) is untied, with a warning naming the layers, since each layer applied its own mask.
    Parameter objects and the order of ``parameters()`` and ``state_dict()`` are kept.
    """
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


def refresh_masks(model: nn.Module) -> None:
    """Bring every mask of ``model`` up to date with its scores now (forward does it lazily)."""
    groups = {id(m.group): m.group for _, _, m in iter_score_masks(model)}
    for group in groups.values():
        group.refresh()


def mask_density(model: nn.Module) -> dict[str, float]:
    """Fraction of weights each mask keeps, by module name (for reports and tests)."""
    refresh_masks(model)
    return {name: float(m.mask.float().sum() / m.mask.numel())
            for name, _, m in iter_score_masks(model)}
