"""Exact top-k ``|score|`` selection: the one threshold op behind every score mask.

Rounding follows the authors' code (``GetSubnet``): of ``n`` weights, ``int((1 - k) * n)``
with the smallest ``|score|`` are dropped, so ``n - int((1 - k) * n)`` are kept.

Tie rule: the mask is exactly the one a *stable* ascending sort of ``|scores|`` gives (the
authors' ``GetSubnet`` sorts without ``stable``, which leaves ties to the sort's kernel; we fix
them as ``sort(stable=True)`` does, :func:`sorted_reference_mask`): among weights whose
``|score|`` equals the threshold, the lower flat indices are dropped first, so the kept ones
are the tied weights with the highest indices. A NaN score ranks largest (above +inf, as in
the sort; only the sync-free path's selections under :data:`SORT_MIN` rank the two as equals).

How the CPU finds the threshold, the same way for one layer and for the concatenation of all
layers (``threshold="global"``): scores move little per optimizer step, so the last *cut* (a
value between the last dropped and the first kept magnitude) usually still separates the two
sets. The dropped entries are those ``<= cut``; their count certifies the mask. When it is
off by ``m`` entries, the threshold moved past about ``m`` entries, so one comparison about
``m`` entry gaps away, on the side the count says, brackets it; only the rows holding
entries between the two bounds are selected among (``kthvalue``) and rewritten. The usual
step is off by one or two entries: up to :data:`FEW` of them are moved across the cut
directly, found among the rows holding the most extreme entries on the wrong side
(:meth:`TopKSelector._mend_few_`), without a second comparison. Magnitudes are viewed as rows of :data:`ROW` so that one row-sum per comparison locates those rows. A
first call has no cut: its bracket is the whole range, i.e. a plain ``kthvalue``. Per-layer
thresholds of several layers are certified together (:meth:`TopKSelector.select_each_`): each
layer starts on a row of its own, so one comparison against every row's cut and one count
serve them all, and only a layer whose count is off is mended, as above. A training step
repeats that call on the same tensors: :meth:`TopKSelector.prepare_each` does its checks and
layout once (:class:`EachSelection`), and masks laid out as the magnitudes are
(:func:`row_layout`) are written in one op.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

# Entries per row. A row's count of 0/1 indicators is exact in float32, and a narrow band
# touches few rows, so the selection gathers a small fraction of the magnitudes; rows much
# shorter cost more row-sum overhead, much longer gather more needless neighbours.
ROW = 128
# A bound ``moved + SPREAD * sqrt(moved) + SLACK`` entry gaps from the cut brackets a threshold
# that moved past ``moved`` entries: the gaps vary (about Poisson), and a few entries of slack
# keep a tiny move from needing a second try.
SPREAD, SLACK = 3, 8
# A bound that fails is tried WIDEN times farther, TRIES times in all; then the infinite bound
# (a selection over the whole moved side) is taken. Three tries reach 256x the expected gap.
WIDEN, TRIES = 16, 3
# A band of at most this many entries gives its threshold and the entry after it from one
# partial sort (``topk``); a larger one (a first selection) takes one ``kthvalue``.
RANKED_MAX = 256
# Rows holding the band with at most this many entries in all are ranked among directly
# (one partial sort), without first picking the band's entries out of them.
NEAR_MAX = 2048
# A count off by at most FEW entries (the usual training step: a threshold that moved past one
# or two entries) is mended from one partial sort of the tensor with the entries on the wrong
# side pushed out of reach, without bracketing a band first; tensors up to FEW_MAX entries.
FEW, FEW_MAX = 16, 1 << 20
# Off the CPU (no host sync), from this size on one stable sort beats ``kthvalue``, which
# runs one thread block per slice.
SORT_MIN = 100_000


def num_kept(numel: int, keep_ratio: float) -> int:
    """How many of ``numel`` weights a mask keeps, rounded as the authors' code does."""
    return numel - int((1 - keep_ratio) * numel)


class Magnitude:
    """What a score mask ranks, said in this one place: ``|scores|``, as the paper does
    (``GetSubnet`` sorts ``scores.abs()``), and that ranking's slope, through which the popup
    gradient reaches the scores. Another ranking is a subclass overriding both (as
    ``importance_scores`` is ``torch.nn.utils.prune``'s one seam)."""

    def rank(self, scores: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return torch.abs(scores, out=out)

    def slope(self, scores: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sign(scores, out=out)


MAGNITUDE = Magnitude()


def check_importance(importance) -> "Magnitude":
    """``importance`` if it ranks and has a slope (a :class:`Magnitude` or alike)."""
    if not all(callable(getattr(importance, k, None)) for k in ("rank", "slope")):
        raise TypeError(f"importance must have rank(scores, out) and slope(scores, out) methods "
                        f"(e.g. a topk.Magnitude subclass), got {importance!r}")
    return importance


class TopKSelector:
    """Exact top-k ``|score|`` masks with reused scratch; see the module docstring.

    On the CPU (or with ``sync_free=False``) each ``key``'s last cut is reused, as the module
    docstring says; reading a count costs nothing there. Elsewhere (or with
    ``sync_free=True``) the mask comes from tensor ops alone, without a host sync: a stable
    sort for large selections, ``kthvalue`` and one ``cumsum`` for the ties below that.
    """

    def __init__(self, sync_free: bool | None = None, importance: Magnitude = MAGNITUDE):
        if sync_free not in (None, True, False):
            raise ValueError(f"sync_free must be None (auto), True or False, got {sync_free!r}")
        self.sync_free = sync_free
        self.importance = check_importance(importance)  # what is ranked: |scores| by default
        self._mag: torch.Tensor | None = None  # magnitudes, NaN past the last row's end
        self._ind: torch.Tensor | None = None  # float32 indicators of the dropped entries
        self._few: torch.Tensor | None = None  # scratch of the few-entry mend
        self._cuts: dict = {}  # key -> (cut, magnitude gap per entry near the threshold)
        self._plans: dict = {}  # key -> _Layout of select_each_

    def select_(self, masks: Sequence[torch.Tensor], scores: Sequence[torch.Tensor], keep: int,
                key=0) -> None:
        """Fill ``masks`` with 1 at the ``keep`` largest ``|score|`` over all of ``scores``.

        One threshold over the concatenation (pass one pair for a per-layer mask); ``key``
        names the threshold whose last cut the CPU path reuses.
        """
        sizes = _checked(masks, scores)
        n = sum(sizes)
        if not 0 <= keep <= n:
            raise ValueError(f"keep must be in [0, {n}], got {keep!r}")
        if keep in (0, n):
            for m in masks:
                m.fill_(keep == n)
            return
        first = scores[0]
        sync_free = self._sync_free(first)
        mag, ind = self._scratch(-(-n // ROW) * ROW, first)
        offset = 0
        with torch.no_grad():
            for s, size in zip(scores, sizes):
                self.importance.rank(s.detach().reshape(-1), out=mag[offset:offset + size])
                offset += size
            if sync_free:
                _drop_sync_free_(ind[:n], mag[:n], n - keep)
            else:
                mag[n:].fill_(math.nan)  # the last row's padding: never counted nor in a band
                self._drop_(ind.view(-1, ROW), mag.view(-1, ROW), n, n - keep, key)
            offset = 0
            for m, size in zip(masks, sizes):
                torch.eq(ind[offset:offset + size], 0, out=m.view(-1))
                offset += size

    def select_each_(self, masks: Sequence[torch.Tensor], scores: Sequence[torch.Tensor],
                     keeps: Sequence[int], key=0, flat_masks: torch.Tensor | None = None) -> None:
        """Fill ``masks[i]`` with 1 at the ``keeps[i]`` largest ``|scores[i]|``, for every i.

        One threshold per tensor (per-layer masks), found in one pass for all of them: the
        tensors' magnitudes are laid side by side, each from a row boundary on, so one
        comparison against every tensor's last cut and one row count certify them all, and
        only the tensors whose count is off are mended (as :meth:`select_` mends one).
        ``flat_masks``: a buffer of which the masks are views, laid out as
        :func:`row_layout` says, so that all of them are written in one op.
        """
        self.prepare_each(masks, scores, keeps, key, flat_masks)()

    def prepare_each(self, masks: Sequence[torch.Tensor], scores: Sequence[torch.Tensor],
                     keeps: Sequence[int], key=0, flat_masks: torch.Tensor | None = None
                     ) -> "EachSelection":
        """:meth:`select_each_`, checked and laid out once, to call at every step while
        :meth:`EachSelection.fits` the tensors (a training step passes the same ones)."""
        return EachSelection(self, masks, scores, keeps, key, flat_masks)

    def _sync_free(self, like: torch.Tensor) -> bool:
        return self.sync_free if self.sync_free is not None else like.device.type != "cpu"

    def _plan(self, key, sizes: list, like: torch.Tensor) -> "_Layout":
        """The side-by-side layout of tensors of ``sizes`` under ``key`` (kept while they last)."""
        plan = self._plans.get(key)
        if plan is None or plan.sizes != sizes or plan.bounds.device != like.device \
                or plan.bounds.dtype != like.dtype:
            plan = self._plans[key] = _Layout(sizes, like, key)
            for i, start in enumerate(plan.starts):  # a cut is a hint its count certifies
                cut = self._cuts.get(plan.keys[i], (-math.inf, None))[0]
                plan.bounds[start // ROW:plan.ends[i] // ROW].fill_(cut)
        return plan

    def _drop_each_(self, plan: "_Layout", ind, mag, sizes, drops) -> None:
        """Per-tensor :meth:`_drop_`: one comparison and count for all, then the misses."""
        ind2d, mag2d = ind.view(-1, ROW), mag.view(-1, ROW)
        if len(sizes) == 1:  # one tensor: its cut is a number, compared without a bounds column
            if drops[0] in (0, sizes[0]):
                ind2d.fill_(drops[0] != 0)
            else:
                self._drop_(ind2d, mag2d, sizes[0], drops[0], plan.keys[0])
            return
        torch.le(mag2d, plan.bounds, out=ind2d)
        rows = ind2d.sum(1)  # at most ROW per row: exact in float32
        per_row = rows.tolist()  # one op; each tensor's count is then summed here
        for i, (size, drop) in enumerate(zip(sizes, drops)):
            r0, r1 = plan.starts[i] // ROW, plan.ends[i] // ROW
            count = int(sum(per_row[r0:r1]))
            if drop in (0, size):
                ind2d[r0:r1].fill_(drop != 0)
            elif count != drop:
                k = plan.keys[i]
                cut = self._cuts.get(k, (-math.inf, None))[0]
                self._drop_(ind2d[r0:r1], mag2d[r0:r1], size, drop, k, (cut, rows[r0:r1], count))
                plan.bounds[r0:r1].fill_(self._cuts.get(k, (-math.inf, None))[0])

    def _scratch(self, padded: int, like: torch.Tensor):
        """Magnitudes in ``like``'s dtype and indicators, ``padded`` long, shared by all keys."""
        mag = _reused(self._mag, padded, like.dtype, like.device)
        if mag is not self._mag:  # both regrown together: a prepared selection checks ``_mag``
            self._mag, self._ind = mag, torch.empty(padded, device=like.device, dtype=torch.float32)
        return self._mag[:padded], self._ind[:padded]

    def _drop_(self, ind2d, mag2d, n: int, drop: int, key, counted=None) -> None:
        """Set ``ind2d`` to 1 at the ``drop`` smallest magnitudes (ties: lowest indices);
        ``counted``, when given, is the count at the last cut already in ``ind2d``."""
        cut, gap = self._cuts.get(key, (-math.inf, None))  # a first call: bracket everything
        counted = counted or _count(mag2d, cut, ind2d)
        if counted[2] == drop:  # exactly ``drop`` entries up to the cut: no tie straddles it
            return
        if abs(counted[2] - drop) <= FEW and n <= FEW_MAX and self._ranks_magnitudes():
            mended = self._mend_few_(ind2d, mag2d, drop - counted[2])
            if mended is not None:
                if gap is None:  # a first selection: the one gap seen is the estimate
                    gap = max(mended[2] - mended[1], math.ulp(mended[1]))
                self._cuts[key] = (mended[0], gap)
                return
        up = counted[2] < drop  # the threshold lies above the cut
        lo, hi = (counted, None) if up else (None, counted)
        for bound in _bounds(cut, gap, abs(counted[2] - drop), up):
            counted = _count(mag2d, bound, ind2d)
            if counted[2] == drop:  # the bound is itself an exact cut
                self._cuts[key] = (bound, gap)
                return
            if counted[2] > drop:
                hi = counted
            else:
                lo = counted
            if (counted[2] > drop) == up:
                break
        else:  # more NaN than kept entries: every number is dropped, then NaN by index
            nan = torch.nonzero(torch.isnan(mag2d.view(-1)[:n])).view(-1)
            ind2d.view(-1).index_fill_(0, nan[:drop - counted[2]], 1)
            self._cuts.pop(key, None)
            return
        self._cuts[key] = _select_band_(ind2d, mag2d, n, drop, lo, hi)

    def _ranks_magnitudes(self) -> bool:
        """Whether what is ranked is ``|scores|``: never negative (NaN aside)."""
        return type(self.importance).rank is Magnitude.rank

    def _mend_few_(self, ind2d, mag2d, off: int):
        """Move ``|off|`` entries across the cut that ``ind2d`` marks (1: dropped, ``<=`` the
        cut), so that ``off`` more entries are dropped: ``(new cut, threshold, next entry)``,
        or None without writing anything where this cannot certify the result.

        ``off > 0``: the ``off`` smallest kept entries drop; the dropped ones are pushed to at
        least the dtype's largest number, NaN to infinity, out of reach. ``off < 0``: the
        ``-off`` largest dropped entries are kept; the kept ones (NaN too) are zeroed. Then
        the ``|off| + 1`` rows of the most extreme entries hold the ``|off| + 1`` most extreme
        entries (each other row's extreme is passed by one entry in each of those rows), so
        one small partial sort among them finds the entries to move and the first that
        stays: were it equal to the last one moved, a tie would straddle the threshold (the
        band then sorts it out, by index); an infinity within reach also leaves it to the band.
        """
        self._few = _reused(self._few, mag2d.numel(), mag2d.dtype, mag2d.device)
        few = self._few[:mag2d.numel()].view(mag2d.shape)
        m, up = abs(off), off > 0
        if up:
            big = torch.finfo(mag2d.dtype).max
            torch.add(mag2d, ind2d, alpha=big, out=few)  # dropped: >= big
            few.nan_to_num_(nan=math.inf, posinf=math.inf)
            extremes = few.amin(1)
        else:
            torch.mul(mag2d, ind2d, out=few)  # kept: 0, or NaN (from NaN and infinity)
            few.nan_to_num_(nan=0.0)
            extremes = few.amax(1)
        rows = torch.topk(extremes, min(m + 1, extremes.numel()), largest=not up).indices
        near = few.index_select(0, rows)
        values, where = torch.topk(near.view(-1), m + 1, largest=not up)
        moving, staying = values[m - 1:].tolist()  # the last entry moved, the first that stays
        if up:  # the threshold is the last entry dropped now, the first kept one follows it
            t, following = moving, staying
            if not t < following < big:  # a tie, or an infinity or dropped entry in reach
                return None
        else:  # the threshold is the first entry that stays dropped
            t, following = staying, moving
            if not t < following:  # a tie (moved entries, > t >= 0, are dropped ones)
                return None
        moved = ind2d.index_select(0, rows)
        moved.view(-1).index_fill_(0, where[:m], 1 if up else 0)
        ind2d.index_copy_(0, rows, moved)
        return (t + following) / 2, t, following


def _reused(buf: torch.Tensor | None, n: int, dtype, device) -> torch.Tensor:
    """``buf`` while it holds at least ``n`` entries of ``dtype`` on ``device``, else a new
    buffer of ``n``: scratch reused from call to call."""
    if buf is None or buf.numel() < n or buf.dtype != dtype or buf.device != device:
        return torch.empty(n, dtype=dtype, device=device)
    return buf


def _checked(masks, scores) -> list:
    """The sizes of ``scores``, once each mask is seen to be a contiguous tensor as large."""
    sizes = [s.numel() for s in scores]
    if len(masks) != len(scores) or not sizes or any(
            m.numel() != size or not m.is_contiguous() for m, size in zip(masks, sizes)):
        raise ValueError("each mask must be a contiguous tensor shaped like its scores, got "
                         f"masks {[tuple(m.shape) for m in masks]} for scores "
                         f"{[tuple(s.shape) for s in scores]}")
    return sizes


def row_layout(sizes: Sequence[int]) -> tuple[list, int]:
    """Where :meth:`TopKSelector.select_each_` puts tensors of ``sizes`` side by side: each
    from a row boundary on (``starts``), ``padded`` entries in all. A buffer laid out so can
    hold all their masks (``flat_masks``)."""
    starts, start = [], 0
    for size in sizes:
        starts.append(start)
        start += -(-size // ROW) * ROW
    return starts, start


class _Layout:
    """Where :meth:`TopKSelector.select_each_` puts each tensor: from a row boundary on, so
    every row belongs to one tensor and holds that tensor's cut in ``bounds``."""

    def __init__(self, sizes: list, like: torch.Tensor, key):
        self.sizes = list(sizes)
        self.starts, self.padded = row_layout(sizes)
        self.ends = self.starts[1:] + [self.padded]
        device = like.device
        self.bounds = torch.full((self.padded // ROW, 1), -math.inf, dtype=like.dtype,
                                 device=device)
        pads = [torch.arange(b + n, e) for b, n, e in zip(self.starts, sizes, self.ends)
                if b + n < e]
        self.pads = torch.cat(pads).to(device) if pads else None
        self.keys = [(key, i) for i in range(len(sizes))]
        self._nan = torch.full((ROW,), math.nan, dtype=like.dtype, device=device)

    def pieces(self, scores: Sequence[torch.Tensor]) -> list:
        """The flat scores and NaN pads in layout order: their concatenation fills the
        scratch, padding included, in one op."""
        out = []
        for s, start, size, end in zip(scores, self.starts, self.sizes, self.ends):
            out.append(s.reshape(-1))
            if start + size < end:
                out.append(self._nan[:end - start - size])
        return out


class EachSelection:
    """One :meth:`TopKSelector.select_each_` over fixed tensors, checked and laid out once.

    A training step passes the same masks and scores every time, so the checks, the layout,
    the views of the scratch and the pieces of the one concatenation are made here once;
    a call then runs only the comparisons (and the mends of the layers whose cut moved).
    """

    def __init__(self, selector: TopKSelector, masks, scores, keeps, key, flat_masks):
        sizes = _checked(masks, scores)
        if len(keeps) != len(sizes) or not all(0 <= k <= n for k, n in zip(keeps, sizes)):
            raise ValueError(f"keeps must give one count in [0, n] per tensor of sizes {sizes}, "
                             f"got {list(keeps)!r}")
        first = scores[0]
        self.selector, self.sizes = selector, sizes
        self.drops = [n - k for n, k in zip(sizes, keeps)]
        self.signature = _signature(masks, scores)
        self.sync_free = selector._sync_free(first)
        self.plan = plan = selector._plan(key, sizes, first)
        self.scores = [s.detach() for s in scores]  # aliases: same memory and version counter
        self.masks = list(masks)
        self.flat_masks = _flat_masks(flat_masks, self.masks, plan)
        # several tensors ranked as one concatenation, when the ranking goes entry by entry
        self.concat = (len(sizes) > 1 and selector._ranks_magnitudes()
                       and all(s.is_contiguous() for s in self.scores))
        self.pieces = plan.pieces(self.scores) if self.concat else None
        self._scratch = None

    def fits(self, masks, scores) -> bool:
        """Whether these are still the tensors (same memory, shapes, dtypes) it was made for."""
        return _signature(masks, scores) == self.signature

    def __call__(self) -> None:
        selector, plan = self.selector, self.plan
        if self._scratch is None or self._scratch[0] is not selector._mag:  # scratch regrown
            mag, ind = selector._scratch(plan.padded, self.scores[0])
            mags = [mag[b:b + n].view(s.shape) for b, n, s in zip(plan.starts, self.sizes, self.scores)]
            inds = [ind[b:b + n].view(m.shape) for b, n, m in zip(plan.starts, self.sizes, self.masks)]
            self._scratch = (selector._mag, mag, ind, mags, inds)
        _, mag, ind, mags, inds = self._scratch
        with torch.no_grad():
            if self.concat:
                torch.cat(self.pieces, out=mag)
                torch.abs(mag, out=mag)  # NaN pads stay NaN: never counted nor in a band
            else:
                for s, m in zip(self.scores, mags):
                    selector.importance.rank(s, out=m)
                if plan.pads is not None:
                    mag.index_fill_(0, plan.pads, math.nan)
            if self.sync_free:
                for start, size, drop in zip(plan.starts, self.sizes, self.drops):
                    if drop in (0, size):  # nothing to select (and kthvalue needs k >= 1)
                        ind[start:start + size].fill_(drop != 0)
                    else:
                        _drop_sync_free_(ind[start:start + size], mag[start:start + size], drop)
            else:
                selector._drop_each_(plan, ind, mag, self.sizes, self.drops)
            if self.flat_masks is not None:
                torch.eq(ind, 0, out=self.flat_masks)
            else:
                for m, i in zip(self.masks, inds):
                    torch.eq(i, 0, out=m)


def _signature(masks, scores) -> tuple:
    """Memory, layout and dtype of each pair: what a prepared selection reads and writes."""
    return tuple((s.data_ptr(), s.shape, s.stride(), s.dtype, m.data_ptr(), m.shape, m.stride(),
                  m.dtype) for s, m in zip(scores, masks))


def _flat_masks(flat: torch.Tensor | None, masks: list, plan: _Layout) -> torch.Tensor | None:
    """``flat`` if every mask is its view at the layout's place, else ValueError."""
    if flat is None:
        return None
    size = flat.element_size()
    placed = (flat.dim() == 1 and flat.numel() == plan.padded and flat.is_contiguous()
              and all(m.dtype == flat.dtype and m.device == flat.device
                      and m.data_ptr() == flat.data_ptr() + start * size
                      for m, start in zip(masks, plan.starts)))
    if not placed:
        raise ValueError(f"flat_masks must be a 1-d buffer of {plan.padded} entries with each "
                         f"mask its view from offset {plan.starts} on (topk.row_layout)")
    return flat


def _count(mag2d, bound: float, ind2d):
    """Mark the entries ``<= bound`` in ``ind2d``; return ``(bound, rows' counts, count)``."""
    torch.le(mag2d, bound, out=ind2d)
    rows = ind2d.sum(1)
    return bound, rows, int(rows.sum(dtype=torch.float64))


def _bounds(cut: float, gap, moved: int, up: bool):
    """Candidate bounds on the side the threshold moved to, nearest first, infinity last."""
    sign = 1 if up else -1
    if gap is not None and math.isfinite(cut):
        width = (moved + SPREAD * math.sqrt(moved) + SLACK) * gap
        for i in range(TRIES):
            bound = cut + sign * width * WIDEN ** i
            if math.isfinite(bound):
                yield bound
    yield sign * math.inf


def _select_band_(ind2d, mag2d, n: int, drop: int, lo, hi):
    """Rewrite the rows of ``ind2d`` holding entries in ``(lo, hi]``; return the next cut.

    ``lo`` and ``hi`` are :func:`_count` results with fewer and more than ``drop`` entries
    up to them; ``ind2d`` holds one of the two comparisons, right outside those rows.
    """
    (low, rows_lo, below), (high, rows_hi, up_to_high) = lo, hi
    rows = torch.nonzero(rows_lo != rows_hi).view(-1)
    near = mag2d.index_select(0, rows)
    flat = near.view(-1)
    if flat.numel() <= NEAR_MAX:  # few rows: the threshold's rank among all their entries
        outside = below - int(rows_lo.index_select(0, rows).sum(dtype=torch.float64))
        k = drop - outside  # entries <= low outside these rows are ranked below them all
        ranked = torch.topk(flat, min(k + 1, flat.numel()), largest=False).values
        t, *following = ranked[k - 1:].tolist()
        following = following[0] if following else high
        straddle = following == t  # else exactly k of these entries are <= t
        within = flat
    else:
        outside = below
        band = flat[(flat > low) & (flat <= high)]
        k = drop - below  # the threshold's rank in the band
        if k < band.numel() <= RANKED_MAX:  # the k-th and the next entry from one partial sort
            t, following = torch.topk(band, k + 1, largest=False).values[k - 1:].tolist()
            straddle = following == t
        else:
            t = float(torch.kthvalue(band, k).values)
            above = band[band > t]
            following = float(above.min()) if above.numel() else high
            straddle = True  # counted below
        within = band
    if not following <= high:  # NaN, or past ``high``: nothing else lies in (t, high]
        following = high
    dropped = torch.empty(near.shape, dtype=ind2d.dtype, device=ind2d.device)
    torch.le(near, t, out=dropped)
    kept_ties = outside + int(torch.count_nonzero(within <= t)) - drop if straddle else 0
    if kept_ties:  # the stable sort keeps the tied entries of the highest indices
        tied = torch.nonzero(flat == t).view(-1)
        dropped.view(-1)[tied[tied.numel() - kept_ties:]] = 0
    ind2d.index_copy_(0, rows, dropped)
    gap = (high - low) / max(up_to_high - below, 1)  # entries in (low, high]
    if not math.isfinite(gap):  # a selection from scratch: as if spread evenly over [0, 2t]
        gap = 2 * t / n
    gap = max(gap, math.ulp(t))
    if kept_ties or not math.isfinite(following):
        return t, gap
    return (t + following) / 2, gap  # halfway to the next entry: room for small moves


def _drop_sync_free_(ind: torch.Tensor, mag: torch.Tensor, drop: int) -> None:
    """Set ``ind`` to 1 at the ``drop`` smallest of ``mag``, from tensor ops only."""
    if mag.numel() >= SORT_MIN:
        ind.zero_().index_fill_(0, torch.sort(mag, stable=True).indices[:drop], 1)
        return
    torch.nan_to_num_(mag, nan=math.inf, posinf=math.inf)  # NaN ranks largest
    t = torch.kthvalue(mag, drop).values
    tied = mag == t
    torch.lt(mag, t, out=ind)
    # the first ``drop - #(< t)`` tied entries (by index) are dropped
    ind.masked_fill_(tied & (tied.cumsum(0) <= drop - torch.count_nonzero(ind)), 1)


def topk_mask_(mask: torch.Tensor, scores: torch.Tensor, keep: int,
               selector: TopKSelector | None = None) -> torch.Tensor:
    """Fill ``mask`` with 1 at the ``keep`` largest ``|scores|`` and 0 elsewhere, in place.

    Equal to :func:`sorted_reference_mask` (ties as in the module docstring) on every device
    and dtype, without a host sync off the CPU. Pass a :class:`TopKSelector` to reuse its
    scratch and, on the CPU, its last cut across calls.
    """
    (selector or TopKSelector()).select_([mask], [scores], keep)
    return mask


def sorted_reference_mask(scores: torch.Tensor, keep_ratio: float,
                          importance: Magnitude = MAGNITUDE) -> torch.Tensor:
    """The authors' full-sort mask, made stable, the reference the fast path is tested against."""
    flat = importance.rank(scores.detach()).flatten()
    out = torch.empty_like(flat)
    idx = flat.sort(stable=True).indices
    j = int((1 - keep_ratio) * flat.numel())
    out[idx[:j]] = 0
    out[idx[j:]] = 1
    return out.view_as(scores)
