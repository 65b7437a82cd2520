"""The main job on embedded data: train a small CNN on scikit-learn's digits, quantize, compare.

Every number in the table is measured in this run: accuracy on the held-out split, artifact size
on disk, and the latency of one batch (float32 baseline timed in the same process).

>>> rows = run_demo(epochs=12)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

import lowbit
from lowbit.measure import format_table, measure_latency, top1_accuracy

__all__ = ["DigitsCNN", "load_digits_split", "train", "run_demo", "format_demo", "DEMO_SCHEMES"]

log = logging.getLogger(__name__)

DEMO_SCHEMES = ("FP16", "BF16", "W8A16", "W8A8", "W8A8-dynamic")


class DigitsCNN(nn.Module):
    """Three conv blocks (conv-BN-ReLU, one of them depthwise-separable) and an MLP head."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
            nn.MaxPool2d(2),
        )  # fmt: skip
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(128 * 2 * 2, 256), nn.ReLU(), nn.Linear(256, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass(frozen=True)
class Split:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_split(test_fraction: float = 0.3, seed: int = 0) -> Split:
    """scikit-learn's bundled 8x8 digits (1797 images, no download) as ``[n, 1, 8, 8]`` in [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(x) * test_fraction)
    test, tr = perm[:n_test], perm[n_test:]
    return Split(x[tr], y[tr], x[test], y[test])


def train(model: nn.Module, split: Split, epochs: int = 12, seed: int = 0) -> nn.Module:
    """Adam + cross-entropy, batch 64; a few seconds on a laptop CPU."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    n = len(split.x_train)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(n).split(64):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(split.x_train[idx]), split.y_train[idx])
            loss.backward()
            opt.step()
        sched.step()
    return model.eval()


def run_demo(
    epochs: int = 12, seed: int = 0, batch_size: int = 256, schemes: tuple[str, ...] = DEMO_SCHEMES
) -> list[dict[str, object]]:
    """Train, quantize with every scheme, and measure; returns one row per variant."""
    split = load_digits_split(seed=seed)
    torch.manual_seed(seed)  # the initial weights too: the demo's numbers are reproducible
    model = train(DigitsCNN(), split, epochs=epochs, seed=seed)
    calibration = list(split.x_train[:512].split(64))
    batch = split.x_test[:batch_size]
    float_size = lowbit.model_size(model)
    float_latency = measure_latency(lambda: model(batch), min_time_s=0.5)
    rows = [_row("float32", model, split, float_size, float_size, float_latency, float_latency)]
    for scheme in schemes:
        qmodel = lowbit.quantize(model, scheme, calibration=calibration)
        latency = measure_latency(lambda qm=qmodel: qm(batch), min_time_s=0.5)
        rows.append(
            _row(
                scheme, qmodel, split, lowbit.model_size(qmodel), float_size, latency, float_latency
            )
        )
    return rows


def _row(name, model, split, size, float_size, latency, float_latency) -> dict[str, object]:
    return {
        "variant": name,
        "accuracy %": 100.0 * top1_accuracy(model, split.x_test, split.y_test),
        "size (bytes)": size,
        "compression": f"{float_size / size:.2f}x",
        "batch latency ms": latency.median_ms,
        "speed-up": f"{float_latency.median_ms / latency.median_ms:.2f}x",
        "weight dtypes": _weight_dtypes(model),
    }


def _weight_dtypes(model: nn.Module) -> str:
    dtypes = {
        str(t.dtype).replace("torch.", "")
        for k, t in model.state_dict().items()
        if k.endswith(("weight", "qweight")) and t.dim() > 1
    }
    return ",".join(sorted(dtypes))


COLUMNS = [
    "variant",
    "accuracy %",
    "size (bytes)",
    "compression",
    "batch latency ms",
    "speed-up",
    "weight dtypes",
]


def format_demo(rows: list[dict[str, object]]) -> str:
    return format_table(rows, COLUMNS)
