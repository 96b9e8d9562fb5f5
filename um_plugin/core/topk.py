"""Exact top-k ``|score|`` selection: the one threshold op behind every score mask.

Rounding follows the official code (``GetSubnet``): of ``n`` weights, ``int((1 - k) * n)``
with the smallest ``|score|`` are dropped, so ``n - int((1 - k) * n)`` are kept.

Tie rule: the mask is exactly the one a *stable* ascending sort of ``|scores|`` gives (the
official code with ``sort(stable=True)``, :func:`sorted_reference_mask`): among weights whose
``|score|`` equals the threshold, the lower flat indices are dropped first, so the kept ones
are the tied weights with the highest indices. Every device and dtype gives the same mask.
"""
from __future__ import annotations

import functools
import math
from numbers import Real
from typing import Sequence

import torch

_ROW = 128  # magnitudes per row when the CPU path looks for the threshold's neighbours
_HINT_TRIES = 3  # band widenings around the last threshold before an exact kthvalue
_HINT_MIN = 1 << 13  # smaller selections go straight to kthvalue: fewer ops, less overhead
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
            if row == 1:  # a small layer (or one with no row length): the fewest ops
                torch.nan_to_num_(mag2d, nan=math.inf, posinf=math.inf)  # NaN ranks largest
                if cut is not None:
                    torch.gt(mag2d, cut, out=out2d)
                    if int(out2d.sum(dtype=torch.float32)) == keep:
                        return
                return self._exact_layer_(out2d, mag2d, ind2d, keep, key)
            if cut is None:
                torch.nan_to_num_(mag2d, nan=math.inf, posinf=math.inf)
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


@functools.lru_cache(maxsize=None)
def _row_length(n: int) -> int | None:
    """A divisor of ``n`` near 128 (64 to 256: row counts stay exact in any float dtype)."""
    return next((d for d in sorted(range(64, 257), key=lambda d: abs(d - 128)) if n % d == 0),
                None)


def _rewrite_band_(out2d, mag2d, ind2d, rows_cut, kept: int, keep: int, cut: float,
                   spacing: float):
    """The mask against ``cut`` keeps ``kept`` != ``keep``: find the threshold near it.

    ``spacing`` is the last known magnitude gap per entry around the threshold: the
    threshold moved past about ``|kept - keep|`` entries, so one comparison that far from
    ``cut`` (with a margin), on the side the count says it went, brackets it. Only the
    rows holding entries between the two bounds are selected among and rewritten in
    ``out2d``. Returns ``(next cut, spacing)``, or None when no bracket was found within
    :data:`_HINT_TRIES` widenings (the caller then selects from scratch).
    """
    up = kept > keep  # too many above the cut: the threshold moved up
    moved = abs(kept - keep)
    width = (moved + 3 * math.sqrt(moved) + 8) * spacing
    for i in range(_HINT_TRIES):
        other = cut + width * 16 ** i if up else cut - width * 16 ** i
        if not math.isfinite(other):
            return None
        torch.gt(mag2d, other, out=ind2d)
        rows_other = ind2d.sum(1)
        kept_other = int(rows_other.sum(dtype=torch.float64))
        if kept_other == keep:  # the moved bound is itself an exact cut
            out2d.copy_(ind2d)
            return other, spacing
        if (kept_other < keep) if up else (kept_other > keep):
            break
    else:
        return None
    lo, hi, rows_lo, rows_hi, kept_lo, kept_hi = (
        (cut, other, rows_cut, rows_other, kept, kept_other) if up else
        (other, cut, rows_other, rows_cut, kept_other, kept))
    rows = torch.nonzero(rows_lo != rows_hi).view(-1)  # rows with an entry in (lo, hi]
    near = mag2d.index_select(0, rows)
    flat = near.view(-1)
    band = flat[(flat > lo) & (flat <= hi)]
    # every entry above hi is kept, every one up to lo dropped: the band supplies the rest
    t = torch.kthvalue(band, band.numel() - (keep - kept_hi)).values
    new = flat > t
    above = band[band > t]
    short = keep - kept_hi - above.numel()
    if short:  # tied entries straddle t: the stable sort keeps the highest indices
        tied = torch.nonzero(flat == t).view(-1)
        new[tied[tied.numel() - short:]] = True
    out2d.index_copy_(0, rows, new.view_as(near).to(out2d.dtype))
    value = float(t)
    spacing = max((hi - lo) / band.numel(), abs(value) * 2 ** -24, 1e-38)
    if short:
        return value, spacing
    nxt = float(above.min()) if above.numel() else hi  # every entry above the band is > hi
    return (value + min(nxt, hi)) / 2, spacing


def _spacing_guess(cut: float, n: int) -> float:
    """Gap per entry near the threshold if magnitudes spread evenly over ``[0, 2 * cut]``."""
    return max(2 * abs(cut) / n, 1e-38)


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


def _threshold_host(mag2d: torch.Tensor, ind2d: torch.Tensor, n: int, drop: int, hint,
                    info: dict | None = None):
    """Threshold, kept tied positions and the next hint, using host counts (CPU).

    With ``info``, ``info['next']`` is set to the smallest magnitude above the threshold (or a
    value below it) when that comes cheap and no tie is kept.
    """
    flat = mag2d.view(-1)[:n]
    if n >= _HINT_MIN:
        if hint is not None:
            for i in range(_HINT_TRIES):
                found = _threshold_near(mag2d, ind2d, drop, hint[0], hint[1] * 16 ** i, info=info)
                if found is not None:
                    return _with_hint(*found, moved=abs(float(found[0]) - hint[0]))
        else:
            found = _threshold_sampled(mag2d, ind2d, n, drop, info)
            if found is not None:
                return _with_hint(*found, moved=0.0)
    t = torch.kthvalue(flat, drop).values
    value = float(t)
    extra = _kept_ties(flat, t, drop)
    if info is not None and extra is None and n < _HINT_MIN:
        info["next"] = float(torch.kthvalue(flat, drop + 1).values)
    return t, extra, (value, max(abs(value) * 2 ** -10, 1e-30))


def _with_hint(t, extra, moved):
    value = float(t)
    return t, extra, (value, max(2 * moved, abs(value) * 2 ** -12, 1e-30))


def _threshold_sampled(mag2d, ind2d, n, drop, info=None):
    """No last threshold: bracket it from a strided sample, then narrow by interpolation."""
    flat = mag2d.view(-1)[:n]
    sample = flat[::max(1, n // _SAMPLE)]
    m, q = sample.numel(), drop / n
    spread = 6 * math.sqrt(m * q * (1 - q)) + 2
    lo = float(torch.kthvalue(sample, max(1, math.floor(q * m - spread))).values)
    hi = float(torch.kthvalue(sample, min(m, math.ceil(q * m + spread))).values)
    centre, width = (lo + hi) / 2, (hi - lo) / 2
    found = _threshold_near(mag2d, ind2d, drop, centre, width, max_band=_NARROW, info=info)
    if isinstance(found, _Counts):  # right bracket, too many entries in it to extract cheaply:
        below, upto = found  # place the threshold by its rank, as if spread evenly inside
        inside, rank = upto - below, drop - below
        frac = rank / inside
        margin = (6 * math.sqrt(inside * frac * (1 - frac)) + 16) / inside
        guess = centre - width + 2 * width * frac
        ulp = abs(guess) * torch.finfo(mag2d.dtype).eps  # coarse dtypes: ties fill whole ulps
        narrow = _threshold_near(mag2d, ind2d, drop, guess, max(2 * width * margin, 2 * ulp),
                                 info=info)
        found = narrow or _threshold_near(mag2d, ind2d, drop, centre, width, info=info)
    return found


class _Counts(tuple):
    """(entries below the bracket, entries up to its top) when the bracket was too wide."""


def _threshold_near(mag2d, ind2d, drop, centre, width, max_band=None, info=None):
    """The exact threshold if it lies within ``centre ± width``, else None.

    With ``max_band``, a bracket holding more entries returns its :class:`_Counts` instead.
    With ``info``, see :func:`_threshold_host`.
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
        if info is not None:  # every magnitude above ``hi`` exceeds the band's
            above = band[band > t]
            info["next"] = float(above.min()) if above.numel() else hi
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
