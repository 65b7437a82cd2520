"""Small models shared by the tests (not a test module)."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Conv2d + BN + ReLU, a depthwise conv, global pooling and a Linear head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.relu(self.bn(self.conv(x)))
        x = self.relu(self.dw(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def small_cnn(seed: int = 0) -> SmallCNN:
    """A SmallCNN in eval mode with non-trivial BatchNorm statistics (so folding matters)."""
    torch.manual_seed(seed)
    model = SmallCNN()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-0.5, 0.5)
    return model.eval()
