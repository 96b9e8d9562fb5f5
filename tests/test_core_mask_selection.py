"""The top-k selection (``core/topk.py``) equals the stable full sort: every path, dtype,
tie pattern and size, one tensor, several with one threshold, several with one each, and at
every step of scores that move as training moves them."""
import pytest
import torch

from um_plugin.core.topk import (TopKSelector, num_kept, row_layout, sorted_reference_mask,
                                 topk_mask_)


DTYPES = [torch.float32, torch.bfloat16, torch.float16]


PATHS = {"host": False, "sync_free": True}


def scores_of(kind, n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        s = torch.randn(n, generator=g)
    elif kind == "equal":
        s = torch.full((n,), 0.25)
    elif kind == "few_values":  # massive ties, both signs
        s = torch.randint(-4, 5, (n,), generator=g).float() / 4
    else:  # "coarse": random values rounded hard, ties at any threshold
        s = torch.round(torch.randn(n, generator=g) * 16) / 16
    return s.to(dtype)


def reference(scores_list, keep_ratio):
    flat = torch.cat([s.flatten() for s in scores_list])
    return sorted_reference_mask(flat, keep_ratio)


def moved(scores, step, size, g):
    """The scores after one optimizer-like step of relative ``size`` (plus the odd tie/NaN)."""
    s = scores.float() + size * scores.float().abs().max() * torch.randn(scores.shape, generator=g)
    if step % 5 == 3:
        s[::11] = s[7]  # a block of exact ties, possibly at the threshold
    if step % 7 == 6:
        s[::13] = float("nan")
    return s.to(scores.dtype)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["random", "equal", "few_values", "coarse"])
@pytest.mark.parametrize("n", [240, 70_001, 100_003])  # banded CPU path; device sort path
def test_mask_equals_stable_sort(path, dtype, kind, n):
    scores = scores_of(kind, n, dtype)
    for keep_ratio in (0.8, 0.965, 0.5, 0.013):
        keep = num_kept(n, keep_ratio)
        mask = torch.empty(n, dtype=dtype)
        topk_mask_(mask, scores, keep, TopKSelector(PATHS[path]))
        assert int(mask.float().sum()) == keep == n - int((1 - keep_ratio) * n)
        assert torch.equal(mask, reference([scores], keep_ratio).to(dtype))


def test_topk_mask_matches_sort_on_a_large_layer():
    scores = torch.randn(512, 256, 3, 3, generator=torch.Generator().manual_seed(0))
    for keep in (0.8, 0.965, 0.2):
        mask = torch.empty_like(scores)
        topk_mask_(mask, scores, num_kept(scores.numel(), keep))
        assert torch.equal(mask, sorted_reference_mask(scores, keep))


def test_ties_at_the_threshold_still_keep_exactly_k():
    scores = torch.tensor([[1.0, 2.0, 2.0, 2.0], [2.0, 3.0, -2.0, 0.5]])
    mask = torch.empty_like(scores)
    topk_mask_(mask, scores, 5)
    assert int(mask.sum()) == 5
    assert mask[0, 0] == 0 and mask[1, 3] == 0 and mask[1, 1] == 1


def test_all_equal_scores_keep_exact_count_on_the_sync_free_path():
    mask = torch.empty(240)
    topk_mask_(mask, torch.ones(240), num_kept(240, 0.8), TopKSelector(sync_free=True))
    keep = 240 - int((1 - 0.8) * 240)
    assert int(mask.sum()) == keep
    assert torch.equal(mask, torch.arange(240).ge(240 - keep).float())  # ties: highest indices


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_global_threshold_over_several_tensors(path, dtype):
    parts = [scores_of("coarse", n, dtype, seed=i) for i, n in enumerate((70_000, 333, 39_001))]
    parts[1] = parts[1].view(9, 37)
    masks = [torch.empty_like(p) for p in parts]
    keep = num_kept(sum(p.numel() for p in parts), 0.7)
    TopKSelector(PATHS[path]).select_(masks, parts, keep)
    flat = torch.cat([m.flatten() for m in masks])
    assert int(flat.float().sum()) == keep
    assert torch.equal(flat, reference(parts, 0.7).to(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_reused_threshold_follows_moving_and_jumping_scores(dtype):
    """The CPU path's last-threshold reuse is exact however far the scores move."""
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(100_000, generator=g)
    selector, mask = TopKSelector(sync_free=False), torch.empty(100_000, dtype=dtype)
    keep = num_kept(100_000, 0.8)
    moves = [1e-4, 1e-3, 1e-2, 0.0, 1.0, 1e-3, 0.0]  # small steps, none, a jump
    for step, move in enumerate(moves):
        scores = scores + move * torch.randn(100_000, generator=g)
        if step == 5:
            scores = scores * 50  # the scale changes: the old threshold is far off
        s = scores.to(dtype)
        selector.select_([mask], [s], keep)
        assert torch.equal(mask, sorted_reference_mask(s, 0.8).to(dtype)), (step, move)


def test_bad_keep_or_mask_is_refused():
    with pytest.raises(ValueError, match="keep must be in"):
        topk_mask_(torch.empty(4), torch.ones(4), 5)
    with pytest.raises(ValueError, match="shaped like its scores"):
        topk_mask_(torch.empty(3), torch.ones(4), 2)
    with pytest.raises(ValueError, match="sync_free"):
        TopKSelector(sync_free="yes")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("n", [240, 70_001, 100_003])
def test_nan_scores_rank_last_as_in_the_sort(path, n):
    scores = scores_of("random", n, torch.float32)
    scores[::7] = float("nan")
    for keep_ratio in (0.8, 0.5):
        mask = torch.empty(n)
        topk_mask_(mask, scores, num_kept(n, keep_ratio), TopKSelector(PATHS[path]))
        assert torch.equal(mask, sorted_reference_mask(scores, keep_ratio))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["random", "coarse", "equal"])
def test_first_selection_of_a_large_layer_is_exact(dtype, kind):
    """Without a last cut the CPU path selects over the whole range. Exact in every case."""
    n = 400_003
    scores = scores_of(kind, n, dtype)
    mask = torch.empty(n, dtype=dtype)
    topk_mask_(mask, scores, num_kept(n, 0.8), TopKSelector(sync_free=False))
    assert torch.equal(mask, sorted_reference_mask(scores, 0.8).to(dtype))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("n", [240, 100_003])
def test_infinite_and_nan_scores_rank_as_in_the_sort(path, n):
    """+inf ranks below NaN (the CPU path; the sync-free ``kthvalue`` of small selections
    treats NaN as +inf), and more NaN than kept entries drops the first NaN by index."""
    scores = scores_of("random", n, torch.float32)
    scores[::5] = float("nan")
    scores[1::5] = float("inf")
    for keep_ratio in (0.3, 0.1):
        mask = torch.empty(n)
        topk_mask_(mask, scores, num_kept(n, keep_ratio), TopKSelector(PATHS[path]))
        if path == "host" or n >= 100_000:
            assert torch.equal(mask, sorted_reference_mask(scores, keep_ratio))
    mostly_nan = scores_of("random", n, torch.float32)
    mostly_nan[n // 10:] = float("nan")
    mask = torch.empty(n)
    topk_mask_(mask, mostly_nan, num_kept(n, 0.5), TopKSelector(PATHS[path]))
    assert torch.equal(mask, sorted_reference_mask(mostly_nan, 0.5))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["random", "coarse"])
@pytest.mark.parametrize("size", [1e-6, 1e-3, 0.3])  # cut mostly kept / often missed / useless
def test_per_layer_selection_equals_the_sort_at_every_step(path, dtype, kind, size):
    """``select_each_``: every tensor its own top-k, all in one call, at every step of moving
    scores (ties and NaN now and then), including a keep-ratio change under the same key."""
    # rows of 128: 48_000 fills 375 of them, the others end in a padded row; 8_209 is prime
    sizes = [450, 2_400, 48_000, 10_080, 8_209, 17]
    g = torch.Generator().manual_seed(len(sizes))
    parts = [scores_of(kind, n, dtype, seed=n) for n in sizes]
    parts[1] = parts[1].view(48, 50)
    masks = [torch.empty_like(p) for p in parts]
    selector = TopKSelector(PATHS[path])
    for step in range(12):
        for keep_ratio in (0.8,) if step % 4 else (0.8, 0.5):  # another keep, same key: the
            keeps = [num_kept(p.numel(), keep_ratio) for p in parts]  # last cut is not trusted
            selector.select_each_(masks, parts, keeps)
            for m, p, keep in zip(masks, parts, keeps):
                assert int(m.float().sum()) == keep
                assert torch.equal(m, sorted_reference_mask(p, keep_ratio).to(dtype)), step
        parts = [moved(p.flatten(), step, size, g).view(p.shape) for p in parts]


@pytest.mark.parametrize("path", PATHS)
def test_per_layer_selection_keeps_none_or_all_where_asked(path):
    """A small layer at a high keep ratio keeps all its weights (27 at 0.965: int(0.945) = 0
    dropped); one call holds such layers beside ordinary ones, on both paths."""
    parts = [torch.randn(300), torch.randn(7, 11), torch.randn(129)]
    masks = [torch.empty_like(p) for p in parts]
    TopKSelector(PATHS[path]).select_each_(masks, parts, [0, 77, num_kept(129, 0.8)])
    assert int(masks[0].sum()) == 0 and int(masks[1].sum()) == 77
    assert torch.equal(masks[2], sorted_reference_mask(parts[2], 0.8))
    with pytest.raises(ValueError, match="keeps must give one count"):
        TopKSelector().select_each_(masks, parts, [0, 78])
    alone, mask = [torch.randn(300)], [torch.empty(300)]  # one tensor: its own path
    for keep in (0, 300, 0):
        TopKSelector(PATHS[path]).select_each_(mask, alone, [keep])
        assert int(mask[0].sum()) == keep


@pytest.mark.parametrize("path", PATHS)
def test_prepared_selection_into_one_buffer_follows_scores_moved_in_place(path):
    """What a training step does: one prepared selection, rerun while an optimizer moves the
    scores in place, every mask written through one buffer laid out by ``row_layout``; each
    mask equals the sort's at every step. A buffer whose views the masks are not, at the
    layout's places, is refused."""
    sizes = [450, 2_400, 17, 10_080]
    g = torch.Generator().manual_seed(3)
    parts = [scores_of("coarse", n, torch.float32, seed=n) for n in sizes]
    starts, padded = row_layout(sizes)
    flat = torch.empty(padded)
    masks = [flat[s:s + n] for s, n in zip(starts, sizes)]
    keeps = [num_kept(n, 0.8) for n in sizes]
    call = TopKSelector(PATHS[path]).prepare_each(masks, parts, keeps, flat_masks=flat)
    for step in range(8):
        call()
        assert call.fits(masks, parts)
        for m, p in zip(masks, parts):
            assert torch.equal(m, sorted_reference_mask(p, 0.8)), step
        for p in parts:
            p.copy_(moved(p, step, 1e-3, g))
    assert not call.fits(masks, [p.clone() for p in parts])  # other memory: prepare again
    with pytest.raises(ValueError, match="flat_masks must be"):
        TopKSelector().prepare_each(masks[::-1], parts[::-1], keeps[::-1], flat_masks=flat)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [1e-6, 1e-3, 0.3])
def test_global_selection_equals_the_sort_at_every_step(dtype, size):
    """``threshold="global"``: one cut over the concatenated layers, reused and mended alike."""
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


def test_a_cut_that_no_longer_fits_is_never_used():
    """Scores replaced wholesale: the old cut counts wrong, the selection runs again."""
    n = 3_000
    selector, mask = TopKSelector(), torch.empty(n)
    a = torch.randn(n, generator=torch.Generator().manual_seed(0))
    selector.select_([mask], [a], num_kept(n, 0.8))
    b = a * 3 + 1
    selector.select_([mask], [b], num_kept(n, 0.8))
    assert torch.equal(mask, sorted_reference_mask(b, 0.8))


def _spied_few_mends(selector, monkeypatch):
    """Record what each few-entry mend returned (None: left to the band)."""
    seen, real = [], selector._mend_few_

    def spy(ind, mag, off):
        got = real(ind, mag, off)
        seen.append((off, got is not None))
        return got
    monkeypatch.setattr(selector, "_mend_few_", spy)
    return seen


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("per_layer", [True, False])
def test_a_count_off_by_a_few_is_mended_from_one_partial_sort_or_left_to_the_band(
        dtype, per_layer, monkeypatch):
    """The usual step moves the threshold past one or two entries: those are moved across
    the cut directly (both directions). A tie at the new threshold or an infinity within
    reach leaves the case to the band; every mask equals the sort's either way."""
    n, keep_ratio = 200, 0.8  # scores 1..200, exact and distinct in every dtype
    base = (torch.randperm(n, generator=torch.Generator().manual_seed(0)) + 1).float()
    selector, mask = TopKSelector(sync_free=False), torch.empty(n, dtype=dtype)
    keep = num_kept(n, keep_ratio)
    order = base.argsort()
    low_kept, high_dropped = order[n - keep:n - keep + 3], order[n - keep - 3:n - keep]

    def select(s):
        s = s.to(dtype)
        if per_layer:
            selector.select_each_([mask, torch.empty(5, dtype=dtype)], [s, torch.arange(5.).to(dtype)],
                                  [keep, 2])
        else:
            selector.select_([mask], [s], keep)
        assert torch.equal(mask, sorted_reference_mask(s, keep_ratio).to(dtype))

    select(base)  # the first selection: no cut yet
    seen = _spied_few_mends(selector, monkeypatch)
    cases = []
    for name, edit in [
            ("two kept ones fall below the cut", lambda s: s.index_fill_(0, low_kept[:2], 0.5)),
            ("two dropped ones rise above it", lambda s: s.index_fill_(0, high_dropped[-2:], 300.0)),
            ("a kept one falls; the two largest dropped tie", lambda s: s.index_fill_(
                0, low_kept[:1], 0.5).index_fill_(0, high_dropped[-2:-1], float(s[high_dropped[-1]]))),
            ("a dropped one rises; the two smallest kept tie", lambda s: s.index_fill_(
                0, high_dropped[-1:], 300.0).index_fill_(0, low_kept[1:2], float(s[low_kept[0]]))),
            ("every kept one is infinite, and a dropped one rises to them", lambda s: s.index_fill_(
                0, order[n - keep - 1:], float("inf"))),
            ("a kept one falls beside a NaN and an infinity", lambda s: s.index_fill_(
                0, low_kept[:1], 0.5).index_fill_(0, order[-2:-1], float("nan")).index_fill_(
                0, order[-1:], float("inf"))),
            ("an infinity rises above the cut", lambda s: s.index_fill_(0, high_dropped[-1:], float("inf")))]:
        select(base)  # each case moves entries from the base's cut
        seen.clear()
        select(edit(base.clone()))
        cases.append((name, [ok for _, ok in seen]))
    assert cases[0][1] == [True] and cases[1][1] == [True], cases
    assert all(oks == [False] for _, oks in cases[2:5]), cases
    assert cases[5][1] == cases[6][1] == [True], cases  # NaN and infinities out of reach: exact  # the infinity moved is kept, out of reach: exact
