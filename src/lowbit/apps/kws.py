"""Keyword spotting: a DS-CNN that recognises the spoken digits "zero".."nine".

The data is synthesized locally with espeak-ng (see :mod:`lowbit.apps.kws_data` for voices,
speeds, pitches, noise and features): 4000 training clips (200 utterances per word from 45
voices = 5 accents x 9 variants, 5 speeds, 5 pitches, each in two shifted noisy copies) and
600 test clips spoken by 18 other voices at other speeds and pitches, all 1 s, 5-30 dB SNR,
as ``[1, 40, 101]`` log-mel features. First run: about 20 s of synthesis (then cached in
``~/.cache/lowbit/kws/``); training takes about 45 s on two idle CPU cores.

    lowbit report --task kws --out report-kws/

>>> model = DSCNN()
>>> model(torch.zeros(2, 1, 40, 101)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.apps.kws_data import TEST, TRAIN, FeatureConfig, load_split
from lowbit.tasks import Problem, Split, classification_problem, train

__all__ = ["DSCNN", "train_kws", "trained_model", "problem"]


def _ds_block(channels: int, stride: int) -> list[nn.Module]:
    """Depthwise 3x3 then pointwise 1x1, each conv-BN-ReLU (MobileNet's separable block)."""
    return [
        nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False),
        nn.BatchNorm2d(channels), nn.ReLU(),
        nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
    ]  # fmt: skip


class DSCNN(nn.Module):
    """DS-CNN (Zhang et al. 2017, "Hello Edge") shrunk for a CPU minute: a strided stem conv,
    three depthwise-separable blocks, global average pooling and a linear classifier."""

    def __init__(self, num_classes: int = 10, width: int = 64):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, (5, 3), stride=2, padding=(2, 1), bias=False),
            nn.BatchNorm2d(width), nn.ReLU(),
            *_ds_block(width, 2), *_ds_block(width, 1), *_ds_block(width, 1),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def train_kws(
    model: nn.Module, split: Split, epochs: int = 12, seed: int = 0, lr: float = 3e-3
) -> nn.Module:
    """Adam (weight decay 1e-4) + cross-entropy, one-cycle schedule, batch 64; eval mode."""
    return train(model, split, epochs, seed, lr, schedule="onecycle", weight_decay=1e-4)


def trained_model(split: Split, seed: int = 0, epochs: int = 12) -> DSCNN:
    """A :class:`DSCNN` initialised from ``seed`` and trained on ``split`` (reproducible)."""
    torch.manual_seed(seed)
    return train_kws(DSCNN(), split, epochs=epochs, seed=seed)


def problem(seed: int = 0, batch: int = 128, epochs: int = 12) -> Problem:
    """The trained DS-CNN on synthesized spoken digits, as a :class:`lowbit.tasks.Problem`.

    ``seed`` selects the model's initialisation and batch order; the data set is the fixed
    default (:data:`~lowbit.apps.kws_data.TRAIN` / :data:`~lowbit.apps.kws_data.TEST`).
    """
    split = load_split(TRAIN, TEST, FeatureConfig())
    return classification_problem(trained_model(split, seed, epochs), split, batch,
                                  "keyword-spotting CNN (spoken digits)")  # fmt: skip
