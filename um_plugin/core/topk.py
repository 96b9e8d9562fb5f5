"""Exact top-k ``|score|`` selection: the one threshold op behind every score mask.

Rounding follows the official code (``GetSubnet``): of ``n`` weights, ``int((1 - k) * n)``
with the smallest ``|score|`` are dropped, so ``n - int((1 - k) * n)`` are kept.

Tie rule: the mask is exactly the one a *stable* ascending sort of ``|scores|`` gives (the
official code with ``sort(stable=True)``, :func:`sorted_reference_mask`): among weights whose
``|score|`` equals the threshold, the lower flat indices are dropped first, so the kept ones
are the tied weights with the highest indices. Every device and dtype gives the same mask.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .cuts import _rewrite_band_, _row_length, _spacing_guess
from .thresholds import _HINT_MIN, _threshold_host, _threshold_sync_free

_ROW = 128  # magnitudes per row when the CPU path looks for the threshold's neighbours
_SORT_MIN = 100_000  # off the CPU, from this size on one sort beats kthvalue's single block


def num_kept(numel: int, keep_ratio: float) -> int:
    """How many of ``numel`` weights a mask keeps, rounded as the official code does."""
    return numel - int((1 - keep_ratio) * numel)


class TopKSelector:
    """Exact top-k ``|score|`` masks with reused buffers; see the module docstring for ties.

    Two paths give the same mask. On a CUDA/other device (or with ``sync_free=True``) the
    mask is built from tensor ops only: no host-device synchronisation. Large selections
    take one stable radix sort (torch's own ``topk`` prefers a sort for one slice this
    large: ``kthvalue`` runs one thread block per slice), smaller ones ``kthvalue`` and one
    ``cumsum`` for the ties. On the CPU, where reading a count costs nothing, what the last
    selection of the same ``key`` learnt is reused: scores move little per step, so the new
    threshold is found by counting around the old one and selecting among its few
    neighbours (:meth:`select_layer_` says how), falling back to an exact ``kthvalue`` when
    the neighbourhood misses. ``sync_free=False`` forces that path. Every reused value is
    only a guess: a mask is kept only when a count over all entries certifies it.
    """

    def __init__(self, sync_free: bool | None = None):
        if sync_free not in (None, True, False):
            raise ValueError(f"sync_free must be None (auto), True or False, got {sync_free!r}")
        self.sync_free = sync_free
        self._mag: torch.Tensor | None = None
        self._ind: torch.Tensor | None = None
        self._hints: dict = {}
        self._cuts: dict = {}  # key -> a value between the last dropped and first kept magnitude
        self._spacing: dict = {}  # key -> magnitude gap per entry near the last threshold

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

    def select_layer_(self, mask: torch.Tensor, scores: torch.Tensor, keep: int, key) -> None:
        """:meth:`select_` for one layer, with the least work per call (the per-step path).

        On the CPU path the mask is first written against the last cut of ``key`` and
        certified by its count (one pass over ``|scores|`` to compare, one to count, one to
        rule out NaN). When scores crossed the cut, one more comparison on the side they
        moved brackets the new threshold, and only the rows of 128-odd entries holding the
        band are selected among and rewritten. Other cases go through :meth:`select_`.
        """
        n = scores.numel()
        if (not 0 < keep < n or self.sync_free
                or (self.sync_free is None and scores.device.type != "cpu")
                or not mask.is_contiguous()):
            return self.select_([mask], [scores], keep, key)
        row = (_row_length(n) if n >= _HINT_MIN else None) or 1
        mag, ind = self._buffers(n, scores, counts=True)
        mag2d, ind2d, out2d = mag[:n].view(-1, row), ind[:n].view(-1, row), mask.view(-1, row)
        with torch.no_grad():
            torch.abs(scores.detach().reshape(-1, row), out=mag2d)
            cut = self._cuts.get(key)
            if row == 1 or cut is None:  # a small layer (or no row length), or a first call
                torch.nan_to_num_(mag2d, nan=math.inf, posinf=math.inf)  # NaN ranks largest
                if cut is not None:  # the fewest ops: one comparison, one count
                    torch.gt(mag2d, cut, out=out2d)
                    if int(out2d.sum(dtype=torch.float32)) == keep:
                        return
                return self._exact_layer_(out2d, mag2d, ind2d, keep, key)
            torch.gt(mag2d, cut, out=out2d)
            rows_cut = out2d.sum(1)  # exact in any float dtype: a row holds <= 256 ones
            kept, total = torch.stack((rows_cut.sum(dtype=torch.float64),
                                       mag2d.sum().double())).tolist()
            if total != total:  # a NaN score: it ranks largest, which a comparison cannot see
                torch.nan_to_num_(mag2d, nan=math.inf, posinf=math.inf)
                return self._exact_layer_(out2d, mag2d, ind2d, keep, key)
            if kept == keep:  # exactly ``keep`` above the cut: no tie straddles it
                return
            found = _rewrite_band_(out2d, mag2d, ind2d, rows_cut, int(kept), keep, cut,
                                   self._spacing.get(key) or _spacing_guess(cut, n))
            if found is None:
                return self._exact_layer_(out2d, mag2d, ind2d, keep, key)
            self._cuts[key], self._spacing[key] = found

    def _exact_layer_(self, out2d, mag2d, ind2d, keep, key) -> None:
        """Select from scratch (NaN already ranked largest); remember the cut for next time."""
        n = mag2d.numel()
        info: dict = {}
        t, extra, hint = _threshold_host(mag2d, ind2d, n, n - keep, self._hints.get(key), info)
        self._hints[key] = hint
        out = out2d.view(-1)
        torch.gt(mag2d.view(-1), t, out=out)
        if extra is not None:
            out.index_fill_(0, extra, 1)
        # next time, first try halfway between the last dropped and the first kept entry (the
        # threshold itself when that is unknown, or when ties straddle it: then the band
        # search next time brackets the ties and resolves them)
        above = info.get("next")
        self._cuts[key] = hint[0] if extra is not None or above is None else (hint[0] + above) / 2

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
