"""The fast top-k selection equals the official full sort (stable, ties by index) everywhere."""
import math

import pytest
import torch

from core_helpers import TinyCNN
from um_plugin.core import topk
from um_plugin.core.masks import (TopKSelector, attach_score_masks, iter_score_masks, num_kept,
                                  score_parameters, sorted_reference_mask, topk_mask_)

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


def spy_bands(monkeypatch):
    """Record ``(lo, hi)`` of every band selected among: both finite when a missed cut was
    mended in its band's rows, an infinite one for a selection over a whole side."""
    bands, select = [], topk._select_band_
    monkeypatch.setattr(topk, "_select_band_",
                        lambda *a: bands.append((a[4][0], a[5][0])) or select(*a))
    return bands


def reference(scores_list, keep_ratio):
    flat = torch.cat([s.flatten() for s in scores_list])
    return sorted_reference_mask(flat, keep_ratio)


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


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("threshold", ["layer", "global"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_model_masks_match_sort_with_ties_on_both_paths(path, threshold, dtype):
    torch.manual_seed(0)
    model = TinyCNN().to(dtype)
    attach_score_masks(model, 0.7, threshold=threshold, generator=torch.Generator().manual_seed(0))
    masks = [m for _, _, m in iter_score_masks(model)]
    masks[0].group.selector = TopKSelector(PATHS[path])
    with torch.no_grad():
        for p in score_parameters(model):
            p.copy_((p * 40).round() / 40)  # coarse scores: many ties at the threshold
    model(torch.randn(2, 1, 8, 8, dtype=dtype))
    if threshold == "layer":
        for m in masks:
            assert torch.equal(m.mask, sorted_reference_mask(m.scores, 0.7))
    else:
        got = torch.cat([m.mask.flatten() for m in masks])
        assert torch.equal(got, reference([m.scores for m in masks], 0.7))
    total = sum(m.mask.numel() for m in masks)
    kept = sum(int(m.mask.float().sum()) for m in masks)
    assert kept == (num_kept(total, 0.7) if threshold == "global"
                    else sum(num_kept(m.mask.numel(), 0.7) for m in masks))


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
def test_first_selection_of_a_large_layer_is_one_kthvalue_over_everything(dtype, kind,
                                                                         monkeypatch):
    """Without a last cut the CPU path's bracket is the whole range. Exact in every case."""
    bands = spy_bands(monkeypatch)
    n = 400_003
    scores = scores_of(kind, n, dtype)
    mask = torch.empty(n, dtype=dtype)
    topk_mask_(mask, scores, num_kept(n, 0.8), TopKSelector(sync_free=False))
    assert torch.equal(mask, sorted_reference_mask(scores, 0.8).to(dtype))
    assert bands == [(-math.inf, math.inf)]


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
