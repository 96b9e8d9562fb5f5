"""Exact top-k thresholds over magnitudes, found by counting (CPU) or by tensor ops alone.

The helpers of :class:`~.topk.TopKSelector`: each returns the threshold ``t`` (the
``drop``-th smallest magnitude) and the positions of the tied entries equal to ``t`` that are
kept (the highest indices, as a stable sort keeps them). Magnitudes come in with NaN already
mapped to +inf, so NaN ranks largest.
"""
from __future__ import annotations

import math

import torch

_HINT_TRIES = 3  # band widenings around the last threshold before an exact kthvalue
_HINT_MIN = 1 << 13  # smaller selections go straight to kthvalue: fewer ops, less overhead
_SAMPLE = 1 << 14  # strided sample that brackets the threshold when there is no last one
_NARROW = 1 << 13  # a bracket holding more entries is narrowed before they are extracted


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
    rows_lo = ind2d.sum(1)  # float32 row counts are exact (a row has <= 256 entries)
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
