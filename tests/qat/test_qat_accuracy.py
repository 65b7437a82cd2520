"""QAT recovers what post-training quantization loses at 2 bits and 1 bit (digits, short runs)."""

from __future__ import annotations

import pytest
import torch

import lowbit
from lowbit import qat
from lowbit.measure import top1_accuracy
from lowbit.tasks import TASKS, train


@pytest.fixture(scope="module")
def digits():
    task = TASKS["digits"]
    split = task.load(seed=0)
    torch.manual_seed(0)
    return train(task.make_model(), split, epochs=task.epochs), split


@pytest.mark.parametrize("scheme", ["W2A8", "BINARY"])
def test_qat_beats_ptq_at_low_bits(digits, scheme) -> None:
    model, split = digits
    calib = list(split.x_train[:512].split(64))
    ptq = top1_accuracy(
        lowbit.quantize(model, scheme, calibration=calib), split.x_test, split.y_test
    )
    prepared = qat.prepare(model, scheme, calibration=calib)
    batches = list(zip(split.x_train.split(64), split.y_train.split(64), strict=True))
    history = qat.fit(prepared, batches, epochs=6, lr=2e-3, teacher=model, progress=False)
    assert len(history.seconds) == 6 and history.loss[-1] < history.loss[0]
    converted = qat.convert(prepared)
    acc = top1_accuracy(converted, split.x_test, split.y_test)
    assert acc > ptq + 0.2, (scheme, ptq, acc)  # PTQ: ~50 % (W2A8), ~9 % (binary)
    assert acc > 0.9
