"""The per-step layer selection (last cut reused, a missed cut mended in its band's rows)
equals the full sort at every step, whatever the scores do between steps; every stale mask
is refreshed at the first masked layer; and the mask is no buffer of the model."""
import math

import pytest
import torch

from core_helpers import TinyCNN
from um_plugin.core import topk
from um_plugin.core.masks import (TopKSelector, attach_score_masks, iter_score_masks, num_kept,
                                  sorted_reference_mask)
from test_core_masks_select import DTYPES, scores_of, spy_bands


def moved(scores, step, size, g):
    """The scores after one optimizer-like step of relative ``size`` (plus the odd tie/NaN)."""
    s = scores.float() + size * scores.float().abs().max() * torch.randn(scores.shape, generator=g)
    if step % 5 == 3:
        s[::11] = s[7]  # a block of exact ties, possibly at the threshold
    if step % 7 == 6:
        s[::13] = float("nan")
    return s.to(scores.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["random", "coarse"])
# rows of 128: 48_000 fills 375 of them, the others end in a padded row; 8_209 is prime
@pytest.mark.parametrize("n", [450, 2_400, 48_000, 10_080, 8_209])
@pytest.mark.parametrize("size", [1e-6, 1e-3, 0.3])  # cut mostly kept / often missed / useless
def test_layer_selection_equals_the_sort_at_every_step(dtype, kind, n, size, monkeypatch):
    bands = spy_bands(monkeypatch)
    g = torch.Generator().manual_seed(n)
    scores = scores_of(kind, n, dtype)
    mask = torch.empty(n, dtype=dtype)
    selector = TopKSelector()
    selections = 0
    for step in range(12):
        for keep_ratio in (0.8,) if step % 4 else (0.8, 0.5):  # another keep, same key: the
            keep = num_kept(n, keep_ratio)                     # last cut must not be trusted
            selector.select_layer_(mask, scores, keep, key=0)
            selections += 1
            assert int(mask.float().sum()) == keep == n - int((1 - keep_ratio) * n)
            assert torch.equal(mask, sorted_reference_mask(scores, keep_ratio).to(dtype)), step
        scores = moved(scores, step, size, g)
    if size == 1e-6 and kind == "random" and dtype == torch.float32:
        assert len(bands) < selections  # the cut certified some masks without a selection
    if size == 1e-3 and kind == "random" and n in (48_000, 10_080, 8_209):
        # missed cuts were mended in their band's rows alone: those masks were checked
        # against the sort above too
        assert sum(math.isfinite(lo) and math.isfinite(hi) for lo, hi in bands) >= 5, bands


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [1e-6, 1e-3, 0.3])
def test_global_selection_equals_the_sort_at_every_step(dtype, size, monkeypatch):
    """``threshold="global"``: one cut over the concatenated layers, reused and mended alike."""
    bands = spy_bands(monkeypatch)
    g = torch.Generator().manual_seed(3)
    parts = [scores_of("random", n, dtype, seed=i) for i, n in enumerate((9_000, 150, 30_001))]
    masks = [torch.empty_like(p) for p in parts]
    selector = TopKSelector(sync_free=False)
    keep = num_kept(sum(p.numel() for p in parts), 0.8)
    for step in range(10):
        selector.select_(masks, parts, keep)
        got = torch.cat([m.flatten() for m in masks])
        assert torch.equal(got, sorted_reference_mask(torch.cat(parts), 0.8).to(dtype)), step
        parts = [moved(p, step, size, g) for p in parts]
    if size == 1e-3 and dtype == torch.float32:
        assert sum(math.isfinite(lo) and math.isfinite(hi) for lo, hi in bands) >= 3, bands


def test_a_cut_that_no_longer_fits_is_never_used():
    """Scores replaced wholesale: the old cut counts wrong, the selection runs again."""
    n = 3_000
    selector, mask = TopKSelector(), torch.empty(n)
    a = torch.randn(n, generator=torch.Generator().manual_seed(0))
    selector.select_layer_(mask, a, num_kept(n, 0.8), key=0)
    b = a * 3 + 1
    selector.select_layer_(mask, b, num_kept(n, 0.8), key=0)
    assert torch.equal(mask, sorted_reference_mask(b, 0.8))


def test_mask_is_not_a_buffer_and_follows_its_scores_across_dtypes():
    """Not in buffers() (so no per-step BatchNorm backup copies it, nor broadcasts or saves
    it); after ``model.double()`` the mask is rebuilt in the scores' dtype, still exact."""
    model = TinyCNN()
    attach_score_masks(model, 0.7, generator=torch.Generator().manual_seed(0))
    masks = [m for _, _, m in iter_score_masks(model)]
    assert not any(b is m.mask for b in model.buffers() for m in masks)
    assert not any("mask" in k for k in model.state_dict())
    model.double()
    model(torch.randn(2, 1, 8, 8, dtype=torch.float64))
    for m in masks:
        assert m.mask.dtype == m.scores.dtype == torch.float64
        assert torch.equal(m.mask, sorted_reference_mask(m.scores, 0.7))


def _band_case():
    """1,024 distinct magnitudes; a last cut that keeps 810 where 800 are wanted."""
    mag = (torch.randperm(1024, generator=torch.Generator().manual_seed(0)).float() / 1024)
    return mag, 213.5 / 1024  # 810 magnitudes (214..1023) lie above the cut


def _spy_counts(monkeypatch):
    bounds, count = [], topk._count
    monkeypatch.setattr(topk, "_count", lambda m, b, i: bounds.append(b) or count(m, b, i))
    return bounds


@pytest.mark.parametrize("gap_scale, widenings", [(1.0, 0), (1 / 40, 2)])
def test_a_missed_cut_is_bracketed_and_its_band_rows_rewritten(gap_scale, widenings,
                                                               monkeypatch):
    """The threshold moved up past 10 entries: one comparison that far away brackets it (or a
    widened one, when the last gap per entry was too small); the band's rows are rewritten
    and the mask is the sort's. With the bound landing exactly on a cut, that bound is kept."""
    mag, cut = _band_case()
    gap = gap_scale * (10 / 1024) / (10 + 3 * math.sqrt(10) + 8)  # reaches 223.5 / 1024
    bounds, bands = _spy_counts(monkeypatch), spy_bands(monkeypatch)
    selector, mask = TopKSelector(sync_free=False), torch.empty(1024)
    selector._cuts[0] = (cut, gap)
    selector.select_layer_(mask, mag, 800, key=0)
    assert torch.equal(mask, sorted_reference_mask(mag, 800 / 1024))
    assert len(bounds) == 2 + widenings  # the cut, then the bound(s) on the moved side
    next_cut = selector._cuts[0][0]
    assert int((mag > next_cut).sum()) == 800  # the next step's cut certifies this mask
    if widenings == 0:
        assert next_cut == cut + 10 / 1024 and not bands  # the bound was exact: no selection
    else:
        assert len(bands) == 1 and all(map(math.isfinite, bands[0]))


def test_a_band_too_far_is_selected_over_the_whole_moved_side(monkeypatch):
    """Every widened bound misses: the infinite one brackets the threshold; still exact."""
    mag, cut = _band_case()
    bands = spy_bands(monkeypatch)
    selector, mask = TopKSelector(sync_free=False), torch.empty(1024)
    selector._cuts[0] = (cut, 1e-12)
    selector.select_layer_(mask, mag, 800, key=0)
    assert torch.equal(mask, sorted_reference_mask(mag, 800 / 1024))
    assert bands == [(bands[0][0], math.inf)] and bands[0][0] > cut


def test_the_first_stale_layer_refreshes_every_stale_mask(monkeypatch):
    """After a step every mask is selected at the first masked layer's forward, before any
    later layer runs (so no activation sits between two selections)."""
    model = TinyCNN()
    attach_score_masks(model, 0.7, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 1, 8, 8)
    model(x)
    masks = [m for _, _, m in iter_score_masks(model)]
    with torch.no_grad():
        for m in masks:
            m.scores.mul_(torch.rand(m.scores.shape, generator=torch.Generator().manual_seed(1)))
    fresh_at_fc = []
    model.fc.register_forward_pre_hook(
        lambda *_: fresh_at_fc.append([m.seen == m.group._state_of(m) for m in masks]))
    model(x)
    assert fresh_at_fc == [[True, True]]
    for m in masks:
        assert torch.equal(m.mask, sorted_reference_mask(m.scores, 0.7))
