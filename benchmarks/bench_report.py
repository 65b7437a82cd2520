"""The measured report for all-MiniLM-L6-v2 (issue 7): metric = mean cosine of sentence
embeddings to float32 on 256 evaluation sentences; calibration 4 x 32 sentences (batch-1 latency
on one sentence, large-batch latency on 32). No training table (no labels for this model).

Usage: ``python -m benchmarks.bench_report [--out benchmarks/reports/minilm]`` (about 6 minutes).
"""

from __future__ import annotations

import argparse
import warnings

import lowbit
from benchmarks.bench_auto import minilm_problem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/reports/minilm")
    args = parser.parse_args()
    warnings.simplefilter("ignore", RuntimeWarning)
    model, calibration, mean_cosine = minilm_problem()
    rep = lowbit.report(model, calibration=calibration, evaluate=mean_cosine,
                        metric_name="cosine to float32", title="lowbit report: all-MiniLM-L6-v2",
                        progress=True)  # fmt: skip
    out = rep.save(args.out)
    print((out / "report.md").read_text())


if __name__ == "__main__":
    main()
