"""LeNet with OpenOOD's exact layout, for the path without OpenOOD (checkpoints interchange)."""
from __future__ import annotations

from torch import nn


class LeNet(nn.Module):
    """Same modules, names and forward kwargs as ``openood.networks.LeNet`` (28x28 input)."""

    def __init__(self, num_classes: int = 10, num_channel: int = 3):
        super().__init__()
        self.num_classes = num_classes
        self.feature_size = 84
        self.block1 = nn.Sequential(nn.Conv2d(num_channel, 6, 5, stride=1, padding=2),
                                    nn.ReLU(), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(nn.Conv2d(6, 16, 5, stride=1), nn.ReLU(), nn.MaxPool2d(2))
        self.block3 = nn.Sequential(nn.Conv2d(16, 120, 5, stride=1), nn.ReLU())
        self.classifier1 = nn.Linear(120, 84)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(84, num_classes)

    def get_fc(self):
        return (self.fc.weight.detach().cpu().numpy(), self.fc.bias.detach().cpu().numpy())

    def forward(self, x, return_feature=False, return_feature_list=False):
        f1 = self.block1(x)
        f2 = self.block2(f1)
        f3 = self.block3(f2).flatten(1)
        feature = self.relu(self.classifier1(f3))
        logits = self.fc(feature)
        if return_feature:
            return logits, feature
        if return_feature_list:
            return logits, [f1, f2, f3, feature]
        return logits
