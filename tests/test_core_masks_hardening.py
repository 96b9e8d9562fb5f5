"""Masks stay exact under tied weights, keep parameter order, see `.data` edits, run in bf16."""
import warnings

import pytest
import torch
from torch import nn

from core_helpers import TiedMLP, TinyCNN
from um_plugin.core.masks import (attach_score_masks, bake_masks, iter_score_masks, mask_settings,
                                  remove_score_masks, score_parameters, sorted_reference_mask)


def order(model):
    return [n for n, _ in model.named_parameters()], list(model.state_dict())


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
    for name in ("select_", "select_each_"):  # the one-threshold and the per-layer entry
        monkeypatch.setattr(selector, name, lambda *a, **k: calls.append(a))
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


@pytest.mark.parametrize("threshold", ["layer", "global"])
def test_forward_backward_under_bf16_autocast(threshold):
    torch.manual_seed(0)
    model = TinyCNN()
    attach_score_masks(model, 0.8, threshold=threshold, generator=torch.Generator().manual_seed(0))
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        loss = nn.functional.cross_entropy(out, y)
    assert out.dtype == torch.bfloat16
    loss.backward()
    for p in score_parameters(model):
        assert p.grad is not None and p.grad.dtype == p.dtype and torch.isfinite(p.grad).all()
        assert p.grad.abs().sum() > 0


def test_bf16_model_trains_scores_and_masks_stay_exact():
    torch.manual_seed(0)
    model = TinyCNN().to(torch.bfloat16)
    attach_score_masks(model, 0.8, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(score_parameters(model), lr=0.5)
    x, y = torch.randn(4, 1, 8, 8, dtype=torch.bfloat16), torch.tensor([0, 1, 2, 0])
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x).float(), y).backward()
        opt.step()
    model(x)
    for _, _, m in iter_score_masks(model):
        assert m.scores.grad.dtype == torch.bfloat16
        assert torch.equal(m.mask, sorted_reference_mask(m.scores, 0.8))
