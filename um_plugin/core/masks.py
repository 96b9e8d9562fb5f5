"""Popup score masks over weights, attached with ``torch.nn.utils.parametrize``.

A mask never replaces a module or changes its class: each selected ``weight`` becomes a
parametrization ``weight = original * topk(|scores|)``, so forward kwargs, hooks and helper
methods of the model keep working, and :func:`bake_masks` leaves a plain model whose
``state_dict`` (keys and their order) loads into a fresh instance of its class.

The top-k itself (rounding, the stable-sort tie rule, the fast exact selection) lives in
:mod:`.topk`. The keep-ratio and threshold rules are :mod:`.config`'s.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from typing import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from .config import validate_keep_ratio, validate_threshold
from .popup import SlopeBuffer, masked_weight
from .topk import MAGNITUDE, Magnitude, TopKSelector, check_importance, num_kept, row_layout

# Weights per selection call under per-layer thresholds: small layers are selected together
# (one comparison and count for all), a larger layer alone, so the shared scratch stays small.
CHUNK = 1 << 18
MASKABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


class ScoreParameter(nn.Parameter):
    """The learnable scores of one mask; touching ``.data`` marks the mask stale.

    Autograd's version counter misses in-place edits made through ``.data`` (``p.data.copy_``,
    ``p.data[...] = ...``), so every read or write of ``.data`` counts as an edit and the next
    forward recomputes the mask. Edits through ``p.detach()`` or under ``torch.no_grad()``
    bump the version counter and are seen too. Only an alias kept from before a forward and
    edited after it (or a NumPy view) escapes: edit scores in place under ``no_grad`` instead.
    """

    # Overrides torch's private ``TensorBase.data`` descriptor: the only hook on ``.data`` edits,
    # which the mask's cache would otherwise miss (see the class docstring).
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
    Each layer's forward checks its own mask (constant Python work when it is fresh); the
    first stale one refreshes every stale mask of the group (see :meth:`refresh`).
    """

    def __init__(self, keep_ratio: float, threshold: str, importance: Magnitude):
        self.keep_ratio = keep_ratio
        self.threshold = threshold
        self.members: list[ScoreMask] = []
        self.selector = TopKSelector(importance=importance)
        self.slope = SlopeBuffer(importance)  # shared by the layers' backward passes, one by one
        self._seen: tuple | None = None
        self._plan: tuple | None = None  # (members' device, dtype, shape), their chunks
        self._calls: dict = {}  # chunk -> its prepared selection (topk.EachSelection)
        self._flat: dict = {}  # chunk of several layers -> the one buffer their masks view
        self._where: list | None = None  # each member's memory and edits at the last refresh

    @staticmethod
    def _stamp(m: "ScoreMask") -> tuple:
        """What ``m``'s mask was computed from: its scores' memory and version, its mask's."""
        s = m.scores
        return s.data_ptr(), s._version, getattr(s, "_um_edits", 0), m.mask.data_ptr()

    @classmethod
    def _state_of(cls, m: "ScoreMask") -> tuple:
        s, mask = m.scores, m.mask
        if mask.device != s.device or mask.dtype != s.dtype or mask.shape != s.shape:
            # after model.to(...): the mask follows its scores
            m.mask = torch.ones(s.shape, dtype=s.dtype, device=s.device)
        return cls._stamp(m)

    def refresh(self, member: "ScoreMask | None" = None) -> None:
        """Recompute stale masks; a no-op when ``member``'s mask is up to date.

        Under per-layer thresholds, the first layer found stale refreshes every stale layer
        at once, before any activation of the forward pass exists: the selections run back
        to back (warm code, no activations evicted from the caches between layers), and
        each later layer finds its mask fresh.
        """
        if self.threshold == "layer":
            if member is not None and self._stamp(member) == member.seen:
                return
            states = [self._stamp(m) for m in self.members]
            # the scores' memory, layout and .data edits, and the masks' memory, as at the last
            # refresh: the prepared selections still fit (a training step's case)
            where = self._where_of(states)
            same = where == self._where
            if not same:
                self._chunks()  # first: it may lay the masks out anew
                states = [self._state_of(m) for m in self.members]
            with torch.no_grad():
                for key, chunk in enumerate(self._plan[1]):
                    if any(states[i] != self.members[i].seen for i in chunk):
                        call = self._calls.get(key) if same else None
                        if call is None:
                            self._select(key, [self.members[i] for i in chunk])
                        else:
                            call()
                        for i in chunk:
                            self.members[i].seen = states[i]
            # the masks were laid out anew when not ``same``: their memory is read again
            self._where = where if same else self._where_of(states)
            return
        with torch.no_grad():
            state = tuple(self._state_of(m) for m in self.members)
            if state == self._seen:
                return
            total = sum(m.scores.numel() for m in self.members)
            self.selector.select_([m.mask for m in self.members],
                                  [m.scores for m in self.members],
                                  num_kept(total, self.keep_ratio))
            self._seen = tuple(self._state_of(m) for m in self.members)

    def _where_of(self, states: list) -> list:
        """Per member: its scores' memory, ``.data`` edits and layout, and its mask's memory."""
        return [(s[0], s[2], s[3], m.scores.shape, m.scores.stride())
                for s, m in zip(states, self.members)]

    def _select(self, key: int, members: list) -> None:
        """One chunk's per-layer selection, prepared once and rerun while its tensors last."""
        masks, scores = [m.mask for m in members], [m.scores for m in members]
        call = self._calls.get(key)
        if call is None or not call.fits(masks, scores):
            keeps = [num_kept(s.numel(), self.keep_ratio) for s in scores]
            call = self._calls[key] = self.selector.prepare_each(masks, scores, keeps, key,
                                                                 self._flat.get(key))
        call()

    def _chunks(self) -> list[list[int]]:
        """Members selected together: runs of one device and dtype, up to CHUNK weights each
        (a larger layer alone), so small layers share one call and scratch stays small."""
        signature = tuple((m.scores.device, m.scores.dtype, m.scores.shape) for m in self.members)
        if self._plan is None or self._plan[0] != signature:
            chunks, total = [], 0
            for i, (device, dtype, shape) in enumerate(signature):
                n = shape.numel()
                same_kind = chunks and signature[chunks[-1][-1]][:2] == (device, dtype)
                if same_kind and total + n <= CHUNK:
                    chunks[-1].append(i)
                    total += n
                else:
                    chunks.append([i])
                    total = n
            self._plan = (signature, chunks)
            self._calls = {}
            self._flat = {key: self._lay_out([self.members[i] for i in chunk])
                          for key, chunk in enumerate(chunks)
                          if len(chunk) > 1 and self.threshold == "layer"}
        return self._plan[1]

    @staticmethod
    def _lay_out(members: list) -> torch.Tensor:
        """One buffer for the masks of several layers, laid out as the selector reads them
        (``topk.row_layout``), so that one op writes them all; each mask becomes its view,
        with the values it had."""
        like = members[0].scores
        starts, padded = row_layout([m.scores.numel() for m in members])
        flat = torch.ones(padded, dtype=like.dtype, device=like.device)
        for m, start in zip(members, starts):
            view = flat[start:start + m.scores.numel()].view(m.scores.shape)
            if m.mask.shape == view.shape:
                view.copy_(m.mask)
            m.mask = view
        return flat

    def mark_fresh(self) -> None:
        """Declare the masks right for the scores as they are (after restoring both together)."""
        for m in self.members:
            m.seen = self._state_of(m)
        self._seen = tuple(m.seen for m in self.members)


def random_scores(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Popup scores for a weight shaped like ``like``: kaiming-uniform, as the official code.

    Drawn on the CPU so that one seed gives one mask on every device, then moved to ``like``'s.
    """
    scores = torch.empty(like.shape, dtype=like.dtype)
    nn.init.kaiming_uniform_(scores, a=math.sqrt(5), generator=generator)
    return scores.to(like.device)


class ScoreMask(nn.Module):
    """Parametrization ``weight -> weight * topk(|scores|)`` with learnable popup scores."""

    def __init__(self, weight: torch.Tensor, group: _MaskGroup, generator: torch.Generator | None):
        super().__init__()
        self.scores = ScoreParameter(random_scores(weight, generator))
        # A plain attribute, not a buffer: it is a function of the scores, so it needs no
        # saving, moving, broadcasting or per-step backing up with the BatchNorm statistics.
        self.mask = torch.ones_like(self.scores.detach())
        self.group = group
        self.index = len(group.members)  # names this layer's threshold in the selector
        self.seen: tuple | None = None  # score state the mask was computed from
        self.enabled = True

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        self.group.refresh(self)
        return masked_weight(weight, self.scores, self.mask, self.group.slope)

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
                       threshold: str = "layer", generator: torch.Generator | None = None,
                       importance: Magnitude = MAGNITUDE) -> list[str]:
    """Mask the weights of ``model``'s Conv2d/Linear layers in place; return their names.

    ``include`` picks layers by module name and/or type (default: all). ``threshold`` is
    ``'layer'`` (top-k per layer, the official default) or ``'global'`` (one top-k over all).
    Scores are kaiming-uniform as in the official code; pass a seeded ``generator`` to make
    the mask reproducible. A weight shared by several layers gets one mask per layer, as in
    the official code (each layer applies its own). ``importance`` is what the masks rank:
    ``|scores|`` by default (:class:`.topk.Magnitude`, the one seam for another ranking).
    """
    keep_ratio = validate_keep_ratio(keep_ratio)
    check_importance(importance)
    validate_threshold(threshold)
    if has_score_masks(model):
        raise RuntimeError(f"{type(model).__name__} already has score masks; call bake_masks() "
                           "or remove_score_masks() before masking it again")
    chosen = _selected_modules(model, include)
    group = _MaskGroup(keep_ratio, threshold, importance)
    for _, module in chosen:
        order = list(module._parameters)
        mask = ScoreMask(module.weight.detach(), group, generator)
        mask.parameter_order = order  # restored on removal: optimizers match state by position
        group.members.append(mask)
        # unsafe: skip the registration's trial forward, which would select a mask for nothing
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
