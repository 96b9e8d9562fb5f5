"""The authors' network: DenseNet-BC-100 (growth 12) as their ``models/densenet.py`` builds it.

What differs from OpenOOD's ``densenet`` (both descend from the same Facebook DenseNet3):
BatchNorm without affine parameters (their ``NonAffineBatchNorm``, ``bn_type`` in every CIFAR
config), dropout 0.3 after every convolution of a block (``droprate: 0.3``), and convolutions
initialised kaiming-normal (fan-in, ReLU) as their builder does. Module names mirror theirs
(``conv1``, ``block1.layer.0.bn1`` ..., ``trans1``, ``bn1``, ``fc``), so a state_dict of theirs
loads once DataParallel's ``module.`` prefix is dropped. Their model normalises its input with
the CIFAR statistics (125.3, 123.0, 113.9) / 255 and (63.0, 62.1, 66.7) / 255; OpenOOD's
``cifar10`` / ``cifar100`` preprocessing applies the same ones (to 4 decimals) before the
network, so this one takes normalised images. Plain torch; OpenOOD's forward contract
(``return_feature``, ``return_feature_list``, ``forward_threshold``, ``get_fc``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

AUTHORS_DROPOUT = 0.3


def _conv(cin: int, cout: int, kernel: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, kernel_size=kernel, padding=kernel // 2, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
    return conv


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, affine=False)


def _dropout(x, p: float, training: bool):
    """Their blocks skip dropout altogether at rate 0 (no RNG draw)."""
    return F.dropout(x, p=p, training=training) if p > 0 else x


class Bottleneck(nn.Module):
    """BN-ReLU-1x1 conv (4 x growth) - BN-ReLU-3x3 conv (growth), concatenated to the input."""

    def __init__(self, cin: int, growth: int, droprate: float):
        super().__init__()
        self.bn1, self.conv1 = _bn(cin), _conv(cin, 4 * growth, 1)
        self.bn2, self.conv2 = _bn(4 * growth), _conv(4 * growth, growth, 3)
        self.relu = nn.ReLU(inplace=True)
        self.droprate = droprate

    def forward(self, x):
        out = _dropout(self.conv1(self.relu(self.bn1(x))), self.droprate, self.training)
        out = _dropout(self.conv2(self.relu(self.bn2(out))), self.droprate, self.training)
        return torch.cat([x, out], 1)


class Transition(nn.Module):
    """BN-ReLU-1x1 conv halving the channels, then 2x2 average pooling."""

    def __init__(self, cin: int, cout: int, droprate: float):
        super().__init__()
        self.bn1, self.conv1 = _bn(cin), _conv(cin, cout, 1)
        self.relu = nn.ReLU(inplace=True)
        self.droprate = droprate

    def forward(self, x):
        out = _dropout(self.conv1(self.relu(self.bn1(x))), self.droprate, self.training)
        return F.avg_pool2d(out, 2)


class DenseBlock(nn.Module):
    def __init__(self, layers: int, cin: int, growth: int, droprate: float):
        super().__init__()
        self.layer = nn.Sequential(*[Bottleneck(cin + i * growth, growth, droprate)
                                     for i in range(layers)])

    def forward(self, x):
        return self.layer(x)


class DenseNetBC100(nn.Module):
    """DenseNet-BC (depth 100, growth 12, compression 0.5) with the authors' BN and dropout."""

    def __init__(self, num_classes: int = 10, depth: int = 100, growth: int = 12,
                 reduction: float = 0.5, droprate: float = AUTHORS_DROPOUT):
        super().__init__()
        n = int((depth - 4) / 3 / 2)
        planes = 2 * growth
        self.conv1 = _conv(3, planes, 3)
        for index in (1, 2, 3):
            setattr(self, f"block{index}", DenseBlock(n, planes, growth, droprate))
            planes += n * growth
            if index < 3:
                out = int(math.floor(planes * reduction))
                setattr(self, f"trans{index}", Transition(planes, out, droprate))
                planes = out
        self.bn1 = _bn(planes)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(planes, num_classes)
        self.in_planes = self.feature_size = planes

    def _features(self, x):
        f1 = self.conv1(x)
        f2 = self.trans1(self.block1(f1))
        f3 = self.trans2(self.block2(f2))
        f4 = self.relu(self.bn1(self.block3(f3)))
        return [f1, f2, f3, f4], F.avg_pool2d(f4, 8).flatten(1)

    def forward(self, x, return_feature=False, return_feature_list=False):
        feature_list, feature = self._features(x)
        logits = self.fc(feature)
        if return_feature:
            return logits, feature
        if return_feature_list:
            return logits, feature_list
        return logits

    def forward_threshold(self, x, threshold):
        """ReAct's forward: the penultimate features clipped at ``threshold``."""
        return self.fc(self._features(x)[1].clip(max=threshold))

    def get_fc(self):
        return self.fc.weight.cpu().detach().numpy(), self.fc.bias.cpu().detach().numpy()

    def get_fc_layer(self):
        return self.fc
