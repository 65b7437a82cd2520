"""Object detection (issue 9): float vs W8A8 vs W4A8 vs W4A8 QAT, COCO mAP from pycocotools.

Runs ``examples/detection.py`` (same data, model and variants) and adds a control row: the float
model fine-tuned for the same epochs and learning rate as QAT, without quantization, so the QAT
row's change can be told apart from the effect of the extra training.

    python -m benchmarks.bench_detection [--seed 0] [--qat-epochs 2]     # about 2 minutes
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import logging
import time
from pathlib import Path

import torch

from benchmarks.common import machine
from lowbit.apps.detection import EPOCHS, QAT_EPOCHS, QAT_LR, train_detector
from lowbit.measure import format_table

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "detection.py"


def _example():
    spec = importlib.util.spec_from_file_location("detection_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(seed: int = 0, epochs: int = EPOCHS, qat_epochs: int = QAT_EPOCHS):
    example = _example()
    variants, train, test, seconds = example.build_variants(seed, epochs, qat_epochs)
    control = copy.deepcopy(variants["float32"])
    torch.manual_seed(seed)
    start = time.perf_counter()
    train_detector(control, train, qat_epochs, lr=QAT_LR, seed=seed)  # as qat_detector does
    seconds["float fine-tune (control)"] = time.perf_counter() - start
    variants[f"float32 +{qat_epochs} epochs (control)"] = control
    return example.score(variants, test), seconds, example.COLUMNS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--qat-epochs", type=int, default=QAT_EPOCHS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows, seconds, columns = run(args.seed, args.epochs, args.qat_epochs)
    print(machine() + "\n")
    print(format_table(rows, columns))
    print("\n" + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
