"""Object detection: a small CenterNet on digit canvases, scored with pycocotools' COCO mAP.

The model (Zhou et al. 2019, "Objects as Points") predicts, at stride 4, one heatmap per class,
each object's box size and its centre's sub-cell offset, all in one output tensor
``[n, 10 + 4, H/4, W/4]`` (heatmap logits, w, h, dx, dy), so it quantizes and exports like any
convolutional network. Decoding keeps the 3x3 local maxima of the heatmaps (the max-pool "NMS")
and the top ``k`` of them. :func:`coco_map` scores the boxes with pycocotools' ``COCOeval``
(built in memory; the ``apps`` extra installs it), the same code that scores COCO itself.

>>> model = CenterNet()
>>> model(torch.zeros(2, 1, 64, 64)).shape
torch.Size([2, 14, 16, 16])
>>> task = problem(seed=0)  # trains for about a minute  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from lowbit.apps.detection_data import (
    NUM_CLASSES,
    STRIDE,
    DetectionSet,
    encode_targets,
    make_detection_set,
)
from lowbit.errors import ConfigError

if TYPE_CHECKING:
    from lowbit.tasks import Problem

__all__ = [
    "CenterNet",
    "detection_loss",
    "decode",
    "evaluate_detections",
    "coco_map",
    "train_detector",
    "qat_detector",
    "problem",
    "N_TRAIN",
    "N_TEST",
    "EPOCHS",
    "QAT_EPOCHS",
    "QAT_LR",
]

log = logging.getLogger(__name__)

N_TRAIN, N_TEST, EPOCHS = 4096, 512, 8  # problem(): about 45 s of training on one core
QAT_EPOCHS, QAT_LR = 2, 5e-4  # qat_detector's fine-tuning
_PRIOR_LOGIT = -2.19  # heatmap bias = logit(0.1), CenterNet's initialisation


def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False)
    return [conv, nn.BatchNorm2d(cout), nn.ReLU()]


class CenterNet(nn.Module):
    """Conv-BN-ReLU backbone down to stride 4 (dilated at the end for a 43-pixel receptive
    field), then a 3x3 conv and a 1x1 conv to ``num_classes + 4`` channels."""

    def __init__(self, num_classes: int = NUM_CLASSES, width: int = 24):
        super().__init__()
        c = width
        self.num_classes = num_classes
        self.backbone = nn.Sequential(
            *_block(1, c // 2, stride=2), *_block(c // 2, c),
            *_block(c, 2 * c, stride=2), *_block(2 * c, 2 * c), *_block(2 * c, 2 * c, dilation=2),
        )  # fmt: skip
        self.head = nn.Sequential(
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * c, num_classes + 4, 1)
        )
        with torch.no_grad():
            self.head[-1].bias[:num_classes].fill_(_PRIOR_LOGIT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def detection_loss(output: torch.Tensor, target: torch.Tensor, size_weight: float = 0.1):
    """CenterNet's loss against :func:`encode_targets`' ``target``, per object:

    ``L = focal + 0.1·L1(size) + L1(offset)``, the focal term penalty-reduced near peaks
    (α = 2, β = 4): ``-Σ [Y=1] (1-p)² log p + [Y<1] (1-Y)⁴ p² log(1-p)``.
    """
    c = target.shape[1] - 5
    logits, y = output[:, :c], target[:, :c]
    p = torch.sigmoid(logits)
    pos = y.eq(1).float()
    focal = -(
        pos * (1 - p).pow(2) * F.logsigmoid(logits)
        + (1 - pos) * (1 - y).pow(4) * p.pow(2) * F.logsigmoid(-logits)
    ).sum()
    mask = target[:, c + 4 : c + 5]
    num = mask.sum().clamp(min=1.0)
    size = ((output[:, c : c + 2] - target[:, c : c + 2]).abs() * mask).sum()
    offset = ((output[:, c + 2 : c + 4] - target[:, c + 2 : c + 4]).abs() * mask).sum()
    return (focal + size_weight * size + offset) / num


def decode(output: torch.Tensor, k: int = 20) -> list[dict[str, torch.Tensor]]:
    """Boxes from raw outputs: 3x3 local maxima of the sigmoid heatmaps, the top ``k`` per image.

    Returns per image ``{"boxes": [k, 4] (x0, y0, x1, y1) pixels, "scores": [k], "labels": [k]}``.
    """
    c = output.shape[1] - 4
    heat = torch.sigmoid(output[:, :c].float())
    heat = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    n, _, h, w = heat.shape
    scores, idx = heat.reshape(n, -1).topk(min(k, c * h * w))
    labels, cell = idx // (h * w), idx % (h * w)
    ys, xs = cell // w, cell % w
    out = []
    for i in range(n):
        reg = output[i, c:].float().reshape(4, -1)[:, cell[i]]
        cx, cy = xs[i] + reg[2], ys[i] + reg[3]
        half_w, half_h = reg[0].clamp(min=0) / 2, reg[1].clamp(min=0) / 2
        boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], 1) * STRIDE
        out.append({"boxes": boxes, "scores": scores[i], "labels": labels[i]})
    return out


def evaluate_detections(
    detections: Sequence[dict[str, torch.Tensor]],
    targets: Sequence[dict[str, torch.Tensor]],
    image_size: tuple[int, int] = (64, 64),
) -> dict[str, float]:
    """COCO mAP (pycocotools ``COCOeval``, bbox, up to 100 detections per image) of
    ``detections`` against ``targets``: ``{"mAP@0.5": .., "mAP@0.5:0.95": ..}``."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as exc:  # pragma: no cover - the apps extra
        raise ImportError("coco_map needs pycocotools: pip install 'lowbit[apps]'") from exc
    if len(detections) != len(targets):
        raise ConfigError(f"{len(detections)} detection lists for {len(targets)} targets")
    images, annotations, results = [], [], []
    for i, (det, tgt) in enumerate(zip(detections, targets, strict=True), start=1):
        images.append({"id": i, "height": image_size[0], "width": image_size[1]})
        for box, label in zip(tgt["boxes"].tolist(), tgt["labels"].tolist(), strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            # ids from 1: COCOeval reads a matched ground-truth id of 0 as "unmatched"
            annotations.append({"id": len(annotations) + 1, "image_id": i, "iscrowd": 0,
                                "category_id": label + 1, "bbox": [box[0], box[1], w, h],
                                "area": w * h})  # fmt: skip
        for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(),
                                     det["labels"].tolist(), strict=True):  # fmt: skip
            results.append({"image_id": i, "category_id": label + 1, "score": score,
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})  # fmt: skip
    if not results or not annotations:
        return {"mAP@0.5": 0.0, "mAP@0.5:0.95": 0.0}
    categories = [{"id": c + 1, "name": str(c)} for c in range(NUM_CLASSES)]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations, "categories": categories}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"mAP@0.5": max(float(ev.stats[1]), 0.0), "mAP@0.5:0.95": max(float(ev.stats[0]), 0.0)}


def coco_map(
    model: nn.Module,
    images: torch.Tensor,
    targets: Sequence[dict[str, torch.Tensor]],
    batch_size: int = 256,
) -> dict[str, float]:
    """``model``'s COCO mAP@0.5 and mAP@0.5:0.95 on ``images`` ``[n, 1, H, W]`` (H, W multiples
    of 4) against per-image ``{"boxes", "labels"}`` targets."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 1:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ConfigError(f"images must be a tensor [n, 1, H, W], got {shape}")
    if images.shape[2] % STRIDE or images.shape[3] % STRIDE:
        raise ConfigError(f"image height and width must be multiples of {STRIDE}, got "
                          f"{tuple(images.shape[2:])}")  # fmt: skip
    if len(targets) != len(images):
        raise ConfigError(f"{len(images)} images but {len(targets)} targets")
    was_training = model.training
    model.eval()
    detections = []
    with torch.no_grad():
        for batch in images.split(batch_size):
            detections.extend(decode(model(batch)))
    model.train(was_training)
    return evaluate_detections(detections, targets, tuple(images.shape[2:]))


def train_detector(
    model: nn.Module,
    data: DetectionSet,
    epochs: int,
    *,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool | None = None,
) -> nn.Module:
    """Adam with a one-cycle schedule on :func:`detection_loss`; works on float models and on
    :func:`lowbit.qat.prepare`'s fake-quantized ones. Returns ``model`` in eval mode."""
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    target = encode_targets(data.targets, data.images.shape[-1])
    gen = torch.Generator().manual_seed(seed)
    steps = epochs * -(-len(data) // batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(epochs), desc="detector", unit="epoch",
               disable=(not progress) if progress is not None else None)  # fmt: skip
    for epoch in bar:
        total = 0.0
        for idx in torch.randperm(len(data), generator=gen).split(batch_size):
            opt.zero_grad()
            loss = detection_loss(model(data.images[idx]), target[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        bar.set_postfix(loss=f"{total / len(data):.3f}")
        log.info("epoch %d: loss %.4f (%.1f s)", epoch, total / len(data),
                 time.perf_counter() - start)  # fmt: skip
    return model.eval()


def qat_detector(
    model: nn.Module,
    data: DetectionSet,
    calibration: list[torch.Tensor],
    scheme: str = "W4A8",
    epochs: int = QAT_EPOCHS,
    lr: float = QAT_LR,
    seed: int = 0,
) -> nn.Module:
    """Quantization-aware fine-tuning with the detection loss: ``prepare`` (LSQ steps started
    from ``calibration``), :func:`train_detector`, then ``convert`` to the integer model."""
    from lowbit.qat import convert, prepare

    prepared = prepare(model, scheme, calibration=calibration)
    torch.manual_seed(seed)
    train_detector(prepared, data, epochs, lr=lr, seed=seed)
    return convert(prepared)


def problem(seed: int = 0, batch: int = 128) -> Problem:
    """The detection task for ``lowbit report --task detection``: a CenterNet trained for
    :data:`EPOCHS` epochs on :data:`N_TRAIN` canvases, scored by mAP@0.5 on :data:`N_TEST`
    canvases of unseen glyphs."""
    from lowbit.tasks import Problem

    train = make_detection_set(N_TRAIN, seed=seed, split="train")
    test = make_detection_set(N_TEST, seed=seed, split="test")
    torch.manual_seed(seed)
    model = train_detector(CenterNet(), train, EPOCHS, seed=seed)
    return Problem(
        model=model,
        calibration=list(train.images[: 4 * batch].split(batch)),
        evaluate=lambda m: coco_map(m, test.images, test.targets)["mAP@0.5"],
        train_batches=None,  # the report's QAT row trains with cross-entropy
        split=None,
        metric_name="mAP@0.5",
        description="CenterNet-style detector",
    )
