import math

import pytest
import torch
import torch.nn.functional as F

from um_plugin.core.objective import LossConstraint


@pytest.mark.parametrize("xi,beta", [(0.0, 1.0), (0.05, 1.0), (2.0, 1.0), (0.3, 0.5)])
def test_loss_equals_formula(xi, beta):
    g = torch.Generator().manual_seed(1)
    logits, y = torch.randn(16, 5, generator=g), torch.randint(0, 5, (16,), generator=g)
    ce = F.cross_entropy(logits, y)
    assert torch.allclose(LossConstraint(xi, beta)(logits, y), (beta * ce - xi).abs() + xi)


def test_gradient_flips_below_xi():
    logits = torch.tensor([[4.0, 0.0]], requires_grad=True)
    y = torch.tensor([0])
    ce = F.cross_entropy(logits, y)
    LossConstraint(ce.item() + 1.0)(logits, y).backward()
    ascent = logits.grad.clone()
    logits.grad = None
    F.cross_entropy(logits, y).backward()
    assert torch.allclose(ascent, -logits.grad)


@pytest.mark.parametrize("xi", [-0.1, math.nan, math.inf, "0.1", None, True])
def test_bad_xi_is_refused_by_name(xi):
    with pytest.raises(ValueError, match="xi"):
        LossConstraint(xi)


@pytest.mark.parametrize("beta", [0, -1.0, math.nan])
def test_bad_beta_is_refused(beta):
    with pytest.raises(ValueError, match="beta"):
        LossConstraint(0.1, beta)


def test_xi_can_be_reassigned_and_validated():
    loss = LossConstraint(0.1)
    loss.xi = 0.2
    assert loss.xi == 0.2
    with pytest.raises(ValueError):
        loss.xi = -1
