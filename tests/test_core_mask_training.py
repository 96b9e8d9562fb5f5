"""Training through a mask: gradients (straight through to the scores, none to frozen
weights), masks that follow every optimizer step exactly, in fp32, bf16 and under autocast."""
import pytest
import torch
from torch import nn

from core_helpers import TinyCNN, masked_model
from um_plugin.core.masks import (attach_score_masks, freeze_weights, iter_score_masks,
                                  score_parameters)
from um_plugin.core.topk import sorted_reference_mask


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


@pytest.mark.parametrize("threshold", ["layer", "global"])
def test_masks_equal_the_sort_after_every_engine_step(threshold):
    """UMAP through the one engine (weights frozen, scores trained): after every optimizer
    step the masks the next forward uses are the stable sort's of the scores as they are."""
    from core_helpers import loader
    from um_plugin.core import FinetuneConfig, Finetuner
    from um_plugin.core.masks import refresh_masks
    torch.manual_seed(0)
    model = TinyCNN()
    config = FinetuneConfig(mode="umap", epochs=2, lr=0.5, keep_ratio=0.7, threshold=threshold,
                            progress=False)
    batches = list(loader(n=64, batch_size=16))
    tuner = Finetuner(model, 0.1, config, steps_per_epoch=len(batches))
    masks = [m for _, _, m in iter_score_masks(model)]
    moved = 0
    for x, y in batches * 2:
        before = [m.mask.clone() for m in masks]
        tuner.step(x, y)
        refresh_masks(model)
        if threshold == "layer":
            assert all(torch.equal(m.mask, sorted_reference_mask(m.scores, 0.7)) for m in masks)
        else:
            scores = torch.cat([m.scores.detach().flatten() for m in masks])
            got = torch.cat([m.mask.flatten() for m in masks])
            assert torch.equal(got, sorted_reference_mask(scores, 0.7))
        moved += any(not torch.equal(b, m.mask) for b, m in zip(before, masks))
    assert moved >= 4  # the masks really changed along the way


def test_another_importance_changes_what_is_ranked_and_the_gradient_alike():
    """The one seam for what a mask ranks: here the signed scores themselves (slope 1)."""
    from um_plugin.core.topk import Magnitude

    class Signed(Magnitude):
        def rank(self, scores, out=None):
            return scores.clone() if out is None else out.copy_(scores)

        def slope(self, scores, out=None):
            return torch.ones_like(scores) if out is None else out.fill_(1)

    lin = nn.Linear(40, 3, bias=False)
    attach_score_masks(lin, 0.5, generator=torch.Generator().manual_seed(0), importance=Signed())
    x = torch.randn(6, 40)
    lin(x).sum().backward()
    m = next(iter_score_masks(lin))[2]
    assert torch.equal(m.mask, sorted_reference_mask(m.scores, 0.5, Signed()))
    assert torch.equal(m.mask, (m.scores > m.scores.detach().flatten().median()).float())
    w = lin.parametrizations.weight.original
    assert torch.allclose(m.scores.grad, x.sum(0, keepdim=True).expand(3, 40) * w.detach())
    with pytest.raises(TypeError, match="importance must have rank"):
        attach_score_masks(nn.Linear(2, 2), 0.5, importance=abs)
