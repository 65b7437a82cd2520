"""Object detection in one command: train a small CenterNet, quantize it, compare COCO mAP.

    .venv/bin/python examples/detection.py                  # about 2-3 minutes on 2 cores
    .venv/bin/python examples/detection.py --epochs 3 --qat-epochs 1    # quicker, lower mAP

It generates digit canvases from scikit-learn's bundled handwriting (no download), trains the
detector in float, quantizes it post-training to W8A8 and W4A8 (calibrated on 4 training
batches), fine-tunes a W4A8 model with quantization-aware training on the detection loss, and
prints one table: mAP@0.5 and mAP@0.5:0.95 from pycocotools on canvases of unseen glyphs, the
size of each saved artifact, and the change against float.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

import torch

import lowbit
from lowbit.apps.detection import (
    EPOCHS,
    N_TEST,
    N_TRAIN,
    QAT_EPOCHS,
    CenterNet,
    coco_map,
    qat_detector,
    train_detector,
)
from lowbit.apps.detection_data import make_detection_set
from lowbit.measure import format_table

log = logging.getLogger("detection")
COLUMNS = ["variant", "mAP@0.5", "mAP@0.5:0.95", "size KiB", "change vs float (@0.5 / @0.5:0.95)"]


def artifact_kib(model: torch.nn.Module) -> float:
    """Bytes on disk of ``lowbit.save(model)``, in KiB."""
    with tempfile.TemporaryDirectory() as tmp:
        path = lowbit.save(model, tmp)
        return sum(f.stat().st_size for f in path.iterdir()) / 1024


def build_variants(
    seed: int = 0, epochs: int = EPOCHS, qat_epochs: int = QAT_EPOCHS, batch: int = 128
):
    """Train the float detector, quantize it; returns the variants by name, the training and
    test sets, and the seconds each step took."""
    train = make_detection_set(N_TRAIN, seed=seed, split="train")
    test = make_detection_set(N_TEST, seed=seed, split="test")
    torch.manual_seed(seed)
    start = time.perf_counter()
    model = train_detector(CenterNet(), train, epochs, seed=seed, progress=True)
    seconds = {"float training": time.perf_counter() - start}
    calibration = list(train.images[: 4 * batch].split(batch))
    variants = {"float32": model}
    for scheme in ("W8A8", "W4A8"):
        start = time.perf_counter()
        variants[scheme] = lowbit.quantize(model, scheme, calibration=calibration)
        seconds[f"{scheme} quantize"] = time.perf_counter() - start
    start = time.perf_counter()
    variants["W4A8 QAT"] = qat_detector(model, train, calibration, "W4A8", qat_epochs, seed=seed)
    seconds["W4A8 QAT fine-tune"] = time.perf_counter() - start
    return variants, train, test, seconds


def score(variants: dict[str, torch.nn.Module], test) -> list[dict]:
    """One table row per variant: COCO mAPs, artifact size and the change against the first."""
    rows = []
    for name, variant in variants.items():
        scores = coco_map(variant, test.images, test.targets)
        log.info("%s: %s", name, scores)
        rows.append({"variant": name, **scores, "size KiB": f"{artifact_kib(variant):.1f}"})
    ref = rows[0]
    for row in rows[1:]:
        d50 = row["mAP@0.5"] - ref["mAP@0.5"]
        d95 = row["mAP@0.5:0.95"] - ref["mAP@0.5:0.95"]
        row[COLUMNS[-1]] = f"{d50:+.3f} / {d95:+.3f}"
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="float training epochs")
    parser.add_argument("--qat-epochs", type=int, default=QAT_EPOCHS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    variants, _train, test, seconds = build_variants(args.seed, args.epochs, args.qat_epochs)
    rows = score(variants, test)
    print(format_table(rows, COLUMNS))
    print("\n" + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
