import math
import re

import pytest
import torch
import torch.nn.functional as F

from bench_helpers import one_line
from um_plugin.core.config import XI_MAX
from um_plugin.core.objective import LossConstraint, constrain


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


@pytest.mark.parametrize("xi,shown", [
    (torch.tensor([0.1, 0.2]), r"got a torch.float32 tensor of shape \(2,\) \[0.1"),
    (torch.tensor(True), r"got a torch.bool tensor of shape \(\) True"),
    (torch.zeros(3, 4), r"got a torch.float32 tensor of shape \(3, 4\)$"),  # values not listed
])
def test_xi_tensor_that_is_not_one_number_is_named(xi, shown):
    with pytest.raises(ValueError, match=r"loss constraint xi must be a single finite number >= 0"
                                         ) as caught:
        LossConstraint(xi)
    assert re.search(shown, one_line(str(caught.value)))
    assert LossConstraint(torch.tensor([0.25])).xi == 0.25  # one element is one number


@pytest.mark.parametrize("xi", [1e308, 2e38])
def test_xi_too_large_for_the_float32_loss_is_refused_up_front(xi):
    from core_helpers import loader, trained_model
    from um_plugin.core import FinetuneConfig, run_um

    model = trained_model(epochs=1)
    rule = r"xi must be a finite number >= 0 and <= 1.701e\+38 \(beyond that the float32 loss "
    with pytest.raises(ValueError, match=rule + r".* overflows\), got " + re.escape(repr(xi))):
        run_um(model, loader(), xi, FinetuneConfig(epochs=1, progress=False))
    assert XI_MAX * 2 == torch.finfo(torch.float32).max
    assert torch.isfinite(constrain(torch.tensor(0.5), XI_MAX))  # the bound itself still works
    assert not torch.isfinite(constrain(torch.tensor(0.5), XI_MAX * 1.01))  # just above: inf


def test_non_finite_loss_of_a_half_precision_model_names_xi():
    from um_plugin.core import FinetuneConfig, Finetuner, NonFiniteLossError

    model = torch.nn.Linear(4, 3).half()
    batch = (torch.randn(8, 4).half(), torch.arange(8) % 3)
    with pytest.raises(NonFiniteLossError, match=r"xi=40000 is too large for the torch.float16 "
                                                 r"loss, whose largest value is 65504"):
        Finetuner(model, 4e4, FinetuneConfig(epochs=1, progress=False), 1).train_epoch([batch])
    Finetuner(model, 0.1, FinetuneConfig(epochs=1, progress=False), 1).train_epoch([batch])
