"""Keyword spotting on spoken digits synthesized locally, float vs quantized, in one command.

    .venv/bin/python examples/kws.py            # needs espeak-ng: apt-get install espeak-ng

The data (no download): espeak-ng speaks "zero".."nine" with 45 training voices (accents en-us,
en, en-gb-scotland, en-gb-x-rp, en-029, each with 9 voice variants: default, m1, m3, m6, f1,
f3, f5, klatt, croak) at speeds 120-200 wpm and pitches 20-80, 200 utterances per word, each
placed at a random offset in a 1 s window with white or pink noise at 5-30 dB SNR, in two
copies: 4000 clips. The 600 test clips come from 18 other voices (accents en-gb-x-gbclan,
en-gb-x-gbcwmd, en-us-nyc; variants m2, m4, m7, f2, f4, klatt3) at other speeds (130-190) and
pitches (28-72). Features: 40 log-mel bands, 25 ms windows every 10 ms (``[1, 40, 101]``).
Details in ``src/lowbit/apps/kws_data.py``. The first run synthesizes (about 20 s) and caches
the set in ``~/.cache/lowbit/kws/``; every run trains the DS-CNN (about 45 s on 2 idle cores),
then quantizes it with four presets and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

import lowbit
from lowbit.apps.kws import trained_model
from lowbit.apps.kws_data import load_split
from lowbit.measure.accuracy import top1_accuracy

SCHEMES = ("W8A8", "W8A8-dynamic", "W4A8", "W4A16")


def artifact_kib(model) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        return lowbit.artifact_size(lowbit.save(model, tmp)) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("lowbit").setLevel(logging.WARNING)
    logging.getLogger("lowbit.apps").setLevel(logging.INFO)

    t0 = time.perf_counter()
    split = load_split()
    t1 = time.perf_counter()
    model = trained_model(split, args.seed, args.epochs)
    t2 = time.perf_counter()
    print(f"data: {len(split.x_train)} train / {len(split.x_test)} test clips, "
          f"{tuple(split.x_train.shape[1:])} log-mel, loaded or synthesized in {t1 - t0:.1f} s; "
          f"trained {args.epochs} epochs in {t2 - t1:.1f} s\n")  # fmt: skip

    calibration = list(split.x_train[:512].split(128))
    ref = top1_accuracy(model, split.x_test, split.y_test)
    print("| variant | top-1 | change | artifact KiB |\n|---|---|---|---|")
    print(f"| float32 | {ref:.3f} | | {artifact_kib(model):.1f} |")
    for scheme in SCHEMES:
        qmodel = lowbit.quantize(model, scheme, calibration=calibration)
        acc = top1_accuracy(qmodel, split.x_test, split.y_test)
        print(f"| {scheme} | {acc:.3f} | {acc - ref:+.3f} | {artifact_kib(qmodel):.1f} |")


if __name__ == "__main__":
    main()
