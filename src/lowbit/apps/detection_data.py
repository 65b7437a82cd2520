"""A detection set generated offline from real handwriting: scikit-learn's digit glyphs on canvases.

Each canvas is ``size x size`` (64), single channel, values in [0, 1]. It holds 1 to
``max_objects`` glyphs from ``sklearn.datasets.load_digits`` (1797 scanned 8x8 digits, bundled
with scikit-learn: no download), each upscaled bilinearly to a random square side in
``glyph_sizes`` (12-28 px), drawn with a random contrast, never touching another glyph's box, plus
light Gaussian noise. A box is the tight extent of a glyph's ink (upscaled pixels above
``INK``), ``(x0, y0, x1, y1)`` in pixels with ``x1``/``y1`` exclusive; its label is the digit.
Train and test canvases draw from disjoint glyphs (70 % / 30 % of the scans), so the test set
measures detection of handwriting the model never saw.

Targets are CenterNet's (Zhou et al. 2019, "Objects as Points"): per class a heatmap at stride
4 with a Gaussian peak of 1 at each box centre's cell (elliptical, σ = 0.54·w/6 by 0.54·h/6 as in
TTFNet, Liu et al. 2019), and at that cell the box size and the centre's sub-cell offset.

>>> data = make_detection_set(2, seed=0)
>>> data.images.shape, data.targets[0]["boxes"].shape[1]
(torch.Size([2, 1, 64, 64]), 4)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from torch.nn import functional as F

from lowbit.errors import ConfigError

__all__ = ["DetectionSet", "make_detection_set", "encode_targets", "INK", "STRIDE", "NUM_CLASSES"]

INK = 0.25  # an upscaled glyph pixel above this (of 1.0) counts as ink for its box
STRIDE = 4  # the model's output stride
NUM_CLASSES = 10
_TRAIN_FRACTION = 0.7
_SPLITS = {"train": 0, "test": 1}


@dataclass(frozen=True)
class DetectionSet:
    """Canvases ``[n, 1, size, size]`` and, per canvas, torchvision-style targets:
    ``{"boxes": float [k, 4] (x0, y0, x1, y1) pixels, "labels": int64 [k]}``."""

    images: torch.Tensor
    targets: list[dict[str, torch.Tensor]]

    def __len__(self) -> int:
        return len(self.images)


@cache
def _glyphs(split: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 scans (in [0, 1]) and labels of one split; the split depends on ``seed`` only."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    perm = np.random.default_rng(seed).permutation(len(digits.images))
    cut = int(_TRAIN_FRACTION * len(perm))
    idx = perm[:cut] if split == "train" else perm[cut:]
    return (digits.images[idx] / 16.0).astype(np.float32), digits.target[idx].astype(np.int64)


def _upscale(glyph: np.ndarray, side: int) -> np.ndarray:
    x = torch.from_numpy(glyph)[None, None]
    return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)[0, 0].numpy()


def _ink_box(patch: np.ndarray) -> tuple[int, int, int, int]:
    """Tight ``(x0, y0, x1, y1)`` (exclusive ends) of the pixels above :data:`INK`."""
    rows = np.flatnonzero((patch > INK).any(axis=1))
    cols = np.flatnonzero((patch > INK).any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _apart(box, boxes, gap: int = 1) -> bool:
    """True when ``box`` stays ``gap`` pixels clear of every box in ``boxes``."""
    x0, y0, x1, y1 = box
    return all(
        x1 + gap <= b[0] or b[2] + gap <= x0 or y1 + gap <= b[1] or b[3] + gap <= y0 for b in boxes
    )


def _canvas(rng, glyphs, labels, size, max_objects, glyph_sizes, noise):
    canvas = np.zeros((size, size), np.float32)
    boxes, classes = [], []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _try in range(30):  # rejection sampling of a free spot
            i = int(rng.integers(len(glyphs)))
            side = int(rng.integers(glyph_sizes[0], glyph_sizes[1] + 1))
            patch = _upscale(glyphs[i], side)
            px, py = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            bx0, by0, bx1, by1 = _ink_box(patch)
            box = (px + bx0, py + by0, px + bx1, py + by1)
            if _apart(box, boxes):
                region = canvas[py : py + side, px : px + side]
                np.maximum(region, patch * rng.uniform(0.7, 1.0), out=region)
                boxes.append(box)
                classes.append(int(labels[i]))
                break
    canvas += rng.normal(0.0, noise, canvas.shape).astype(np.float32)
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(classes, dtype=torch.int64),
    }
    return np.clip(canvas, 0.0, 1.0), target


def make_detection_set(
    n: int,
    *,
    seed: int = 0,
    split: str = "train",
    size: int = 64,
    max_objects: int = 4,
    glyph_sizes: tuple[int, int] = (12, 28),
    noise: float = 0.05,
) -> DetectionSet:
    """``n`` canvases of ``split`` ("train" or "test" glyphs), the same for the same arguments."""
    if split not in _SPLITS:
        raise ConfigError(f"split is 'train' or 'test', got {split!r}")
    lo, hi = glyph_sizes
    if n < 1 or max_objects < 1 or not 8 <= lo <= hi <= size or size % STRIDE:
        raise ConfigError(
            f"need n >= 1, max_objects >= 1, 8 <= glyph_sizes[0] <= glyph_sizes[1] <= size and "
            f"size a multiple of {STRIDE}; got n={n}, max_objects={max_objects}, "
            f"glyph_sizes={glyph_sizes}, size={size}"
        )
    glyphs, labels = _glyphs(split, seed)
    rng = np.random.default_rng([seed, _SPLITS[split]])
    canvases, targets = [], []
    for _ in range(n):
        canvas, target = _canvas(rng, glyphs, labels, size, max_objects, glyph_sizes, noise)
        canvases.append(canvas)
        targets.append(target)
    images = torch.from_numpy(np.stack(canvases)).unsqueeze(1)
    return DetectionSet(images, targets)


def encode_targets(
    targets: list[dict[str, torch.Tensor]], size: int, num_classes: int = NUM_CLASSES
) -> torch.Tensor:
    """CenterNet training targets ``[n, num_classes + 5, size/4, size/4]``.

    Channels: the class heatmaps, then at each centre cell the box width and height (in output
    cells), the centre's offset within the cell (x, y) and a mask of 1. The Gaussian of a box is
    centred on its integer cell, so the peak is exactly 1:
    ``Y[c, y, x] = max_boxes exp(-(x - cx)² / 2σx² - (y - cy)² / 2σy²)``.
    """
    out = size // STRIDE
    enc = torch.zeros(len(targets), num_classes + 5, out, out)
    ys, xs = torch.meshgrid(torch.arange(out), torch.arange(out), indexing="ij")
    for n, target in enumerate(targets):
        for box, label in zip(target["boxes"], target["labels"], strict=True):
            x0, y0, x1, y1 = (float(v) / STRIDE for v in box)
            cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
            ix, iy = min(int(cx), out - 1), min(int(cy), out - 1)
            sx, sy = max(0.54 * w / 6, 0.1), max(0.54 * h / 6, 0.1)
            g = torch.exp(-((xs - ix) ** 2) / (2 * sx**2) - (ys - iy) ** 2 / (2 * sy**2))
            enc[n, label] = torch.maximum(enc[n, label], g)
            enc[n, num_classes:, iy, ix] = torch.tensor([w, h, cx - ix, cy - iy, 1.0])
    return enc
