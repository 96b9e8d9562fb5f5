"""With the authors' settings (the defaults), the engine IS the authors' fine-tuning loop.

``authors_finetune`` below is our own plain-PyTorch rendering of what
github.com/ZFancy/Unleashing-Mask runs when it fine-tunes: ``main.py``'s epoch loop with
``utils/schedulers.cosine_lr`` called once at the start of each epoch, ``trainers/default.py``'s
``train`` (``model.train()``, forward, ``CustomLoss``, ``zero_grad``, backward, step),
``utils/net_utils.get_optimizer`` (SGD, two groups: names with "bn" and the rest, Nesterov off),
``freeze_model_weights`` (every module's weight and bias, BatchNorm's too) and
``utils/conv_type.GetSubnet`` (full sort of |scores|, the smallest ``int((1 - k) n)`` zeroed,
straight-through gradient). Run side by side on the same weights, scores and batches, the
engine must give the same weights, BatchNorm statistics and losses bit for bit.
"""
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from core_helpers import TinyCNN, loader, trained_model
from um_plugin.core import FinetuneConfig, Finetuner
from um_plugin.core.masks import iter_score_masks

EPOCHS = 100  # the authors' number, so the schedule's last epoch (2.5e-4 lr) is exercised too


class _GetSubnet(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, k):
        out = scores.clone()
        _, idx = scores.flatten().sort()
        j = int((1 - k) * scores.numel())
        flat = out.flatten()  # a view of out
        flat[idx[:j]] = 0
        flat[idx[j:]] = 1
        return out

    @staticmethod
    def backward(ctx, g):
        return g, None


class _SubnetConv(nn.Conv2d):
    def forward(self, x):
        w = self.weight * _GetSubnet.apply(self.scores.abs(), self.prune_rate)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class _SubnetLinear(nn.Linear):
    def forward(self, x):
        return F.linear(x, self.weight * _GetSubnet.apply(self.scores.abs(), self.prune_rate),
                        self.bias)


def _authors_net(plain: TinyCNN, scores: dict, prune_rate: float) -> TinyCNN:
    """``plain``'s weights in the authors' SubnetConv / SubnetLinear, holding ``scores``."""
    net = TinyCNN()
    net.conv = _SubnetConv(1, 8, 3, padding=1)
    net.fc = _SubnetLinear(32, 3)
    net.load_state_dict(plain.state_dict())
    for name in ("conv", "fc"):
        layer = getattr(net, name)
        layer.scores = nn.Parameter(scores[name].clone())
        layer.prune_rate = prune_rate
    return net


def _freeze_model_weights(model: nn.Module) -> None:
    for m in model.modules():
        if getattr(m, "weight", None) is not None:
            m.weight.requires_grad = False
            if getattr(m, "bias", None) is not None:
                m.bias.requires_grad = False


def authors_sgd(model: nn.Module, lr, momentum, weight_decay) -> torch.optim.SGD:
    """Their get_optimizer: two groups (BN and the rest), the same decay, no Nesterov."""
    params = list(model.named_parameters())
    bn = [v for n, v in params if "bn" in n and v.requires_grad]
    rest = [v for n, v in params if "bn" not in n and v.requires_grad]
    return torch.optim.SGD([{"params": bn, "weight_decay": weight_decay},
                            {"params": rest, "weight_decay": weight_decay}],
                           lr, momentum=momentum, weight_decay=weight_decay, nesterov=False)


def authors_finetune(model: nn.Module, batches, xi: float, *, epochs: int, lr=0.1, momentum=0.9,
                     weight_decay=1e-4, beta=1.0) -> list:
    """The authors' loop; returns each step's loss."""
    optimizer = authors_sgd(model, lr, momentum, weight_decay)
    losses = []
    for epoch in range(epochs):
        new_lr = 0.5 * (1 + np.cos(np.pi * epoch / epochs)) * lr  # cosine_lr, no warm-up
        for group in optimizer.param_groups:
            group["lr"] = new_lr
        model.train()
        for images, target in batches:
            output = model(images)
            loss = beta * F.cross_entropy(output, target)
            loss = (loss - xi).abs() + xi
            losses.append(loss.item())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return losses


def _batches(seed=7):
    """The same shuffled batches for both loops: a loader with its own seeded generator."""
    data = loader(batch_size=32).dataset
    return DataLoader(data, batch_size=32, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


def _epoch_means(losses: list, steps: int) -> list:
    """Per-epoch mean loss as the engine's history computes it (batches of 32 samples)."""
    out = []
    for e in range(0, len(losses), steps):
        total = 0.0
        for value in losses[e:e + steps]:
            total += value * 32
        out.append(total / (32 * steps))
    return out


def _assert_bitwise(ours: dict, theirs: dict) -> None:
    assert set(ours) == set(theirs)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


def test_defaults_are_the_authors_code_not_the_papers_text():
    c = FinetuneConfig()
    assert (c.nesterov, c.lr_schedule, c.lr, c.momentum, c.weight_decay, c.epochs) == \
        (False, "epoch", 0.1, 0.9, 1e-4, 100)
    assert (c.keep_ratio, c.freeze_weights, c.min_lr, c.beta) == (0.8, True, 0.0, 1.0)


@pytest.mark.filterwarnings("ignore:Detected call of .lr_scheduler.step")
def test_epoch_schedule_is_the_authors_cosine_lr():
    tuner = Finetuner(trained_model(epochs=1), 0.1, FinetuneConfig(progress=False),
                      steps_per_epoch=3)
    lrs = []
    for _ in range(3 * EPOCHS):
        lrs.append(tuner.optimizer.param_groups[0]["lr"])
        tuner.scheduler.step()
    for epoch in range(EPOCHS):
        expected = 0.5 * (1 + np.cos(np.pi * epoch / EPOCHS)) * 0.1
        assert lrs[3 * epoch: 3 * epoch + 3] == [expected] * 3, epoch
    assert lrs[-1] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert lrs[-1] < 2.5e-5 + 1e-9


@pytest.mark.slow
def test_um_equals_the_authors_loop_bit_for_bit():
    torch.set_num_threads(1)
    start = trained_model(epochs=20)
    xi = 0.15
    ours, theirs = TinyCNN(), TinyCNN()
    ours.load_state_dict(start.state_dict())
    theirs.load_state_dict(start.state_dict())
    tuner = Finetuner(ours, xi, FinetuneConfig(mode="um", progress=False), steps_per_epoch=3)
    history = tuner.fit(_batches())
    their_losses = authors_finetune(theirs, _batches(), xi, epochs=EPOCHS)
    assert history.loss == _epoch_means(their_losses, 3)
    _assert_bitwise(ours.state_dict(), theirs.state_dict())
    assert ours.state_dict()["fc.weight"].ne(start.state_dict()["fc.weight"]).any()


@pytest.mark.slow
@pytest.mark.parametrize("freeze", [True, False], ids=["frozen-weights", "weights-and-scores"])
def test_umap_equals_the_authors_loop_bit_for_bit(freeze):
    torch.set_num_threads(1)
    start = trained_model(epochs=20)
    xi = 0.15
    ours = TinyCNN()
    ours.load_state_dict(start.state_dict())
    tuner = Finetuner(ours, xi, FinetuneConfig(mode="umap", freeze_weights=freeze,
                                               progress=False), steps_per_epoch=3)
    scores = {name: mask.scores.detach().clone() for name, _, mask in iter_score_masks(ours)}
    theirs = _authors_net(start, scores, prune_rate=0.8)
    if freeze:
        _freeze_model_weights(theirs)
    history = tuner.fit(_batches())
    their_losses = authors_finetune(theirs, _batches(), xi, epochs=EPOCHS)
    assert history.loss == _epoch_means(their_losses, 3)
    for name, _, mask in iter_score_masks(ours):
        assert torch.equal(mask.scores, getattr(theirs, name).scores), name
    moved = ~torch.eq(tuner.model.conv.parametrizations.weight.original, start.conv.weight)
    assert moved.any() != freeze  # frozen weights stay, trained ones move
    tuner.finish()  # bake: the weight the authors' forward multiplies in
    expected = theirs.state_dict()
    for name in ("conv", "fc"):
        layer = getattr(theirs, name)
        expected[f"{name}.weight"] = layer.weight * _GetSubnet.apply(layer.scores.abs(), 0.8)
        del expected[f"{name}.scores"]
    _assert_bitwise(ours.state_dict(), expected)
