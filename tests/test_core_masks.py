import pytest
import torch
from torch import nn

from core_helpers import TinyCNN, state_equal
from um_plugin.core.masks import (attach_score_masks, bake_masks, freeze_weights, has_score_masks,
                                  iter_score_masks, mask_density, num_kept, remove_score_masks,
                                  restore_requires_grad, score_parameters, sorted_reference_mask,
                                  topk_mask_)


def masked_model(keep=0.8, threshold="layer", seed=0, **kw):
    torch.manual_seed(123)
    model = TinyCNN()
    attach_score_masks(model, keep, threshold=threshold,
                       generator=torch.Generator().manual_seed(seed), **kw)
    return model


@pytest.mark.parametrize("keep", [0.8, 0.965, 0.5, 0.1, 1.0, 0.3333])
def test_layer_masks_keep_official_count_and_match_full_sort(keep):
    model = masked_model(keep)
    model(torch.randn(2, 1, 8, 8))
    for _, module, m in iter_score_masks(model):
        n = m.scores.numel()
        assert int(m.mask.sum()) == n - int((1 - keep) * n) == num_kept(n, keep)
        assert torch.equal(m.mask, sorted_reference_mask(m.scores, keep))


def test_topk_mask_matches_sort_on_a_large_layer():
    scores = torch.randn(512, 256, 3, 3, generator=torch.Generator().manual_seed(0))
    for keep in (0.8, 0.965, 0.2):
        mask = torch.empty_like(scores)
        topk_mask_(mask, scores, num_kept(scores.numel(), keep))
        assert torch.equal(mask, sorted_reference_mask(scores, keep))


def test_global_threshold_is_one_topk_over_all_layers():
    model = masked_model(0.7, threshold="global")
    model(torch.randn(2, 1, 8, 8))
    masks = [m for _, _, m in iter_score_masks(model)]
    all_scores = torch.cat([m.scores.detach().flatten() for m in masks])
    reference = sorted_reference_mask(all_scores, 0.7)
    assert torch.equal(torch.cat([m.mask.flatten() for m in masks]), reference)
    assert len({round(v, 3) for v in mask_density(model).values()}) > 1  # per-layer rates differ


def test_masking_keeps_class_kwargs_and_helpers():
    model = masked_model()
    logits, feature = model(torch.randn(2, 1, 8, 8), return_feature=True)
    assert logits.shape == (2, 3) and feature.shape == (2, 32)
    assert isinstance(model, TinyCNN) and isinstance(model.conv, nn.Conv2d)
    w, b = model.get_fc()
    assert (w == 0).sum() == 96 - num_kept(96, 0.8)


def test_gradients_reach_scores_not_frozen_weights():
    model = masked_model()
    freeze_weights(model)
    model(torch.randn(4, 1, 8, 8)).sum().backward()
    scores = {id(p) for p in score_parameters(model)}
    for name, p in model.named_parameters():
        if id(p) in scores:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name


def test_score_gradient_is_straight_through():
    lin = nn.Linear(4, 1, bias=False)
    attach_score_masks(lin, 0.5, generator=torch.Generator().manual_seed(0))
    x = torch.randn(3, 4)
    lin(x).sum().backward()
    m = next(iter_score_masks(lin))[2]
    w = lin.parametrizations.weight.original
    expected = x.sum(0, keepdim=True) * w.detach() * m.scores.detach().sign()
    assert torch.allclose(m.scores.grad, expected)
    assert torch.allclose(w.grad, x.sum(0, keepdim=True) * m.mask)


def test_mask_follows_score_updates():
    model = masked_model()
    x = torch.randn(2, 1, 8, 8)
    model(x)
    m = next(iter_score_masks(model))[2]
    before = m.mask.clone()
    with torch.no_grad():
        m.scores.mul_(torch.rand_like(m.scores))
    model(x)
    assert not torch.equal(before, m.mask)
    assert torch.equal(m.mask, sorted_reference_mask(m.scores, 0.8))


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


def test_ties_at_the_threshold_still_keep_exactly_k():
    scores = torch.tensor([[1.0, 2.0, 2.0, 2.0], [2.0, 3.0, -2.0, 0.5]])
    mask = torch.empty_like(scores)
    topk_mask_(mask, scores, 5)
    assert int(mask.sum()) == 5
    assert mask[0, 0] == 0 and mask[1, 3] == 0 and mask[1, 1] == 1


def test_scratch_buffer_is_reused_across_steps():
    model = masked_model()
    x = torch.randn(2, 1, 8, 8)
    model(x)
    group = next(iter_score_masks(model))[2].group
    buffers = group.selector._mag, group.selector._ind
    with torch.no_grad():
        for p in score_parameters(model):
            p.mul_(-1.5)
    model(x)
    assert group.selector._mag is buffers[0] and group.selector._ind is buffers[1]
    assert all(torch.equal(m.mask, sorted_reference_mask(m.scores, 0.8))
               for _, _, m in iter_score_masks(model))
