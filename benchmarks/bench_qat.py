"""QAT against post-training quantization and float, on the demo's two tasks.

Per task and scheme: float accuracy; post-training accuracy (calibrated, round to nearest);
QAT accuracy of the fake-quant model and of the converted integer model; how often the two agree
on the top-1 class; and the seconds per training epoch of QAT against float training.
QAT starts from the trained float model, distils from it (KL on logits, T = 4), and trains
``--epochs`` epochs with Adam and a cosine schedule.
"""

from __future__ import annotations

import argparse
import time

import torch

import lowbit
from benchmarks.common import machine
from lowbit import qat
from lowbit.demo import layers_left_float
from lowbit.measure import format_table, top1_accuracy
from lowbit.tasks import TASKS, train

SCHEMES = ("W8A8", "W4A8", "W4A4", "W2A8", "BINARY", "TERNARY")
COLUMNS = ["task", "scheme", "layers left float", "float %", "PTQ %", "QAT fake %", "QAT int %", "agree %",
           "float s/epoch", "QAT s/epoch"]  # fmt: skip


def _batches(split, seed):
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(split.x_train), generator=gen)
    return [(split.x_train[i], split.y_train[i]) for i in perm.split(64)]


def run(tasks=("digits", "mnist1d"), schemes=SCHEMES, epochs=30, lr=2e-3, seed=0, act="lsq"):
    rows = []
    for name in tasks:
        task = TASKS[name]
        split = task.load(seed=seed)
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        model = train(task.make_model(), split, epochs=task.epochs, seed=seed)
        float_epoch = (time.perf_counter() - t0) / task.epochs
        float_acc = top1_accuracy(model, split.x_test, split.y_test)
        calib = list(split.x_train[:512].split(64))
        for scheme in schemes:
            ptq = lowbit.quantize(model, scheme, calibration=calib, progress=False)
            prepared = qat.prepare(model, scheme, calibration=calib, activation_estimator=act)
            torch.manual_seed(seed)
            hist = qat.fit(prepared, _batches(split, seed), epochs, lr=lr, teacher=model,
                           progress=False)  # fmt: skip
            with torch.no_grad():
                fake = prepared.eval()(split.x_test)
            converted = qat.convert(prepared)
            with torch.no_grad():
                real = converted(split.x_test)
            rows.append({
                "task": name, "scheme": scheme, "layers left float": layers_left_float(converted),
                "float %": 100 * float_acc,
                "PTQ %": 100 * top1_accuracy(ptq, split.x_test, split.y_test),
                "QAT fake %": 100 * float((fake.argmax(1) == split.y_test).float().mean()),
                "QAT int %": 100 * float((real.argmax(1) == split.y_test).float().mean()),
                "agree %": 100 * float((fake.argmax(1) == real.argmax(1)).float().mean()),
                "float s/epoch": float_epoch, "QAT s/epoch": sum(hist.seconds) / len(hist.seconds),
            })  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", nargs="+", default=["digits", "mnist1d"])
    p.add_argument("--schemes", nargs="+", default=list(SCHEMES))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--activations", default="lsq", choices=["lsq", "pact"])
    args = p.parse_args()
    print(machine())
    rows = run(tuple(args.tasks), tuple(args.schemes), args.epochs, args.lr, act=args.activations)
    print(format_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
