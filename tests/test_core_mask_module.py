"""A score mask on a module: attaching, baking and removing it (tied weights, parameter
order), what the model keeps (class, kwargs, state_dict), and when the mask is recomputed."""
import warnings

import pytest
import torch
from torch import nn

from core_helpers import TiedMLP, TinyCNN, masked_model, state_equal
from um_plugin.core.masks import (attach_score_masks, bake_masks, freeze_weights, has_score_masks,
                                  iter_score_masks, mask_density, mask_settings,
                                  remove_score_masks, restore_requires_grad, score_parameters)
from um_plugin.core.topk import EachSelection, TopKSelector, num_kept, sorted_reference_mask

PATHS = {"host": False, "sync_free": True}


def reference(scores_list, keep_ratio):
    return sorted_reference_mask(torch.cat([s.flatten() for s in scores_list]), keep_ratio)


def order(model):
    return [n for n, _ in model.named_parameters()], list(model.state_dict())


@pytest.mark.parametrize("keep", [0.8, 0.965, 0.5, 0.1, 1.0, 0.3333])
def test_layer_masks_keep_official_count_and_match_full_sort(keep):
    model = masked_model(keep)
    model(torch.randn(2, 1, 8, 8))
    for _, module, m in iter_score_masks(model):
        n = m.scores.numel()
        assert int(m.mask.sum()) == n - int((1 - keep) * n) == num_kept(n, keep)
        assert torch.equal(m.mask, sorted_reference_mask(m.scores, keep))


def test_global_threshold_is_one_topk_over_all_layers():
    model = masked_model(0.7, threshold="global")
    model(torch.randn(2, 1, 8, 8))
    masks = [m for _, _, m in iter_score_masks(model)]
    all_scores = torch.cat([m.scores.detach().flatten() for m in masks])
    reference = sorted_reference_mask(all_scores, 0.7)
    assert torch.equal(torch.cat([m.mask.flatten() for m in masks]), reference)
    assert len({round(v, 3) for v in mask_density(model).values()}) > 1  # per-layer rates differ


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


def test_masking_keeps_class_kwargs_and_helpers():
    model = masked_model()
    logits, feature = model(torch.randn(2, 1, 8, 8), return_feature=True)
    assert logits.shape == (2, 3) and feature.shape == (2, 32)
    assert isinstance(model, TinyCNN) and isinstance(model.conv, nn.Conv2d)
    w, b = model.get_fc()
    assert (w == 0).sum() == 96 - num_kept(96, 0.8)


def test_bake_gives_plain_model_with_same_output_and_keys():
    torch.manual_seed(5)
    reference = TinyCNN()
    model = TinyCNN()
    model.load_state_dict(reference.state_dict())
    attach_score_masks(model, 0.8, generator=torch.Generator().manual_seed(1))
    model.eval()
    x = torch.randn(5, 1, 8, 8)
    masked_out = model(x)
    bake_masks(model)
    assert type(model.conv) is nn.Conv2d and type(model.fc) is nn.Linear
    assert not has_score_masks(model)
    assert set(model.state_dict()) == set(reference.state_dict())
    torch.testing.assert_close(model(x), masked_out, atol=1e-6, rtol=0)
    fresh = TinyCNN()
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    torch.testing.assert_close(fresh(x), masked_out, atol=1e-6, rtol=0)
    assert (fresh.conv.weight == 0).sum() == 72 - num_kept(72, 0.8)


def test_remove_restores_original_weights_and_unfreeze():
    torch.manual_seed(0)
    model, copy = TinyCNN(), TinyCNN()
    copy.load_state_dict(model.state_dict())
    attach_score_masks(model, 0.5)
    flags = freeze_weights(model)
    remove_score_masks(model)
    restore_requires_grad(flags)
    assert state_equal(model, copy)
    assert all(p.requires_grad for p in model.parameters())


def test_include_by_name_and_type():
    model = TinyCNN()
    assert attach_score_masks(model, 0.8, include=["fc"]) == ["fc"]
    remove_score_masks(model)
    assert attach_score_masks(model, 0.8, include=nn.Conv2d) == ["conv"]


@pytest.mark.parametrize("keep", [0, -0.1, 1.5, float("nan"), "0.8", None])
def test_bad_keep_ratio(keep):
    with pytest.raises(ValueError, match="keep_ratio"):
        attach_score_masks(TinyCNN(), keep)


def test_bad_threshold_and_names():
    with pytest.raises(ValueError, match="threshold"):
        attach_score_masks(TinyCNN(), 0.8, threshold="model")
    with pytest.raises(ValueError, match="nope"):
        attach_score_masks(TinyCNN(), 0.8, include=["nope"])


def test_model_without_maskable_layers():
    with pytest.raises(ValueError, match="no maskable layers"):
        attach_score_masks(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), 0.8)


def test_masking_twice_is_refused():
    model = masked_model()
    with pytest.raises(RuntimeError, match="already has score masks"):
        attach_score_masks(model, 0.8)


def test_bake_without_masks_is_refused():
    with pytest.raises(ValueError, match="no score masks"):
        bake_masks(TinyCNN())


def test_same_seed_same_mask():
    a, b = masked_model(seed=3), masked_model(seed=3)
    c = masked_model(seed=4)
    sa = score_parameters(a)
    assert all(torch.equal(x, y) for x, y in zip(sa, score_parameters(b)))
    assert not torch.equal(sa[0], score_parameters(c)[0])


@pytest.mark.parametrize("include", [None, ["a"]])  # both layers masked / one masked, one raw
def test_bake_is_exact_for_tied_weights(include):
    torch.manual_seed(0)
    model = TiedMLP()
    attach_score_masks(model, 0.5, include=include, generator=torch.Generator().manual_seed(0))
    x = torch.randn(5, 6)
    with torch.no_grad():
        masked = model(x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bake_masks(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), masked, rtol=0, atol=0)
    assert model.a.weight is not model.b.weight
    untied = "['b']" if include is None else "['a']"  # the layer that got its own weight
    assert any(untied in str(w.message) and "untied" in str(w.message) for w in caught)


def test_bake_keeps_a_tie_whose_masks_agree():
    model = TiedMLP()
    attach_score_masks(model, 1.0)
    weight = model.a.parametrizations.weight.original
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bake_masks(model)
    assert model.a.weight is weight and model.b.weight is weight


def test_remove_keeps_tied_weights_tied():
    model = TiedMLP()
    weight = model.a.weight.detach().clone()
    attach_score_masks(model, 0.5)
    remove_score_masks(model)
    assert model.a.weight is model.b.weight and torch.equal(model.a.weight, weight)


@pytest.mark.parametrize("finish", [bake_masks, remove_score_masks])
def test_parameter_and_state_dict_order_survive_masking(finish):
    model = TinyCNN()
    before = order(model)
    attach_score_masks(model, 0.8)
    model(torch.randn(2, 1, 8, 8))
    finish(model)
    assert order(model) == before


@pytest.mark.parametrize("edit", ["inplace", "copy", "index", "assign"])
def test_scores_edited_through_data_refresh_the_mask(edit):
    model = TinyCNN()
    attach_score_masks(model, 0.6, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 1, 8, 8)
    model(x)
    p = score_parameters(model)[0]
    new = torch.randn(p.shape, generator=torch.Generator().manual_seed(9))
    if edit == "inplace":
        p.data.mul_(new)
    elif edit == "copy":
        p.data.copy_(new)
    elif edit == "index":
        p.data[:] = new
    else:
        p.data = new
    model(x)
    m = next(iter_score_masks(model))[2]
    assert torch.equal(m.mask, sorted_reference_mask(m.scores, 0.6))


@pytest.mark.parametrize("threshold", ["layer", "global"])
def test_unchanged_scores_reuse_the_cached_mask(threshold, monkeypatch):
    model = TinyCNN()
    attach_score_masks(model, 0.6, threshold=threshold)
    x = torch.randn(2, 1, 8, 8)
    model(x)
    selector = next(iter_score_masks(model))[2].group.selector
    calls = []
    # the one-threshold entry, and the per-layer selection of a chunk of layers
    monkeypatch.setattr(selector, "select_", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(EachSelection, "__call__", lambda self: calls.append(self))
    model(x)
    assert calls == []  # nothing changed: no recomputation
    with torch.no_grad():
        score_parameters(model)[1].mul_(2)
    model(x)
    assert len(calls) == 1  # one selection: the changed layer's, or the one global one


def test_mask_settings():
    model = TinyCNN()
    assert mask_settings(model) is None
    attach_score_masks(model, 0.7, threshold="global")
    assert mask_settings(model) == (0.7, "global")
    group = next(iter_score_masks(model))[2].group
    assert (group.keep_ratio, group.threshold) == (0.7, "global")


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


def test_the_first_stale_layer_refreshes_every_stale_mask():
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
    exact_at_fc = []  # read at the last layer's forward, before it runs
    model.fc.register_forward_pre_hook(lambda *_: exact_at_fc.append(
        [torch.equal(m.mask, sorted_reference_mask(m.scores, 0.7)) for m in masks]))
    model(x)
    assert exact_at_fc == [[True, True]]
    for m in masks:
        assert torch.equal(m.mask, sorted_reference_mask(m.scores, 0.7))


@pytest.mark.parametrize("how", ["data", "inplace"])
def test_scores_seen_in_another_layout_refresh_the_mask(how):
    """Scores that keep their memory but change layout (a square matrix transposed through
    ``.data``, or in place) are read in their new layout, not the one the selection was
    prepared for."""
    model = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 6))
    attach_score_masks(model, 0.5, generator=torch.Generator().manual_seed(0))
    x = torch.randn(3, 6)
    model(x)
    p = score_parameters(model)[0]
    with torch.no_grad():
        if how == "data":
            p.data = p.data.t()
        else:
            p.t_()
    model(x)
    for _, _, m in iter_score_masks(model):
        assert torch.equal(m.mask, sorted_reference_mask(m.scores, 0.5))
