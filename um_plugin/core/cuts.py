"""The per-step cut of one layer's mask on the CPU: mend a missed cut in its band's rows.

Scores move little per step, so last step's cut (a value between the last dropped and the
first kept magnitude) usually still separates the two sets, or misses by a few entries. A
mask written against the cut is certified by counting; when the count is off, the entries
that crossed lie in a narrow band next to the cut, and only the rows holding them need a
new selection. Magnitudes are viewed as rows (``mag2d``) so that one row-sum per
comparison locates the band.
"""
from __future__ import annotations

import functools
import math

import torch

from .thresholds import _HINT_TRIES


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
    lo, hi, rows_lo, rows_hi, kept_hi = ((cut, other, rows_cut, rows_other, kept_other) if up
                                         else (other, cut, rows_other, rows_cut, kept))
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
