"""The demo's two CNNs (digits, MNIST-1D): accuracy, size, layers left float and batch latency per
scheme, float32 and every variant timed in interleaved rounds of one run."""

from __future__ import annotations

import argparse

from benchmarks.common import machine
from lowbit.demo import format_demo, run_demo


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=12)
    args = p.parse_args()
    print(machine())
    print(format_demo(run_demo(epochs=args.epochs)))


if __name__ == "__main__":
    main()
