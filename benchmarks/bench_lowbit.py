"""Every scheme side by side, 16 bits down to 1: the comparison table of RESULTS.md.

Per scheme: storage bits per weight read back from the saved MiniLM artifact; held-out accuracy
of the digits CNN and of the MNIST-1D CNN (``lowbit.demo``); all-MiniLM-L6-v2 sentence-embedding
cosine to float32 (real pretrained weights, offline); MiniLM latency at batch 1 and 32 against
float32 timed in the same run. Post-training round-to-nearest only: error-correcting algorithms
and QAT come later, so the 2-bit and binary rows are expected to be poor and are reported as
measured.
"""

from __future__ import annotations

import argparse

from benchmarks import bench_minilm
from benchmarks.common import machine
from lowbit.demo import DEMO_SCHEMES, run_demo
from lowbit.measure import format_table
from lowbit.presets import PRESETS

COLUMNS = ["scheme", "bits/w", "layers left float (digits / mnist1d / MiniLM)", "digits acc %",
           "mnist1d acc %", "MiniLM cos mean", "MiniLM cos min", "MiniLM b1 speed-up",
           "MiniLM b32 speed-up"]  # fmt: skip


def run(schemes=DEMO_SCHEMES, min_time_s=2.0):
    schemes = tuple(s for s in schemes if s in PRESETS)  # presets only: no "+algorithm", no auto
    demo = {(r["task"], r["variant"]): r for r in run_demo(schemes=schemes)}
    minilm, _, _ = bench_minilm.run(schemes=schemes, min_time_s=min_time_s)
    rows = []
    for m in minilm:
        name = "float32" if m["variant"].startswith("float32") else m["variant"]
        left = [demo[(t, name)]["layers left float"] for t in ("digits", "mnist1d")]
        rows.append({
            "scheme": name,
            "bits/w": m["bits/w"],
            "layers left float (digits / mnist1d / MiniLM)":
                " / ".join([*left, m["layers left float"]]),
            "digits acc %": demo[("digits", name)]["accuracy %"],
            "mnist1d acc %": demo[("mnist1d", name)]["accuracy %"],
            "MiniLM cos mean": m["cos mean"],
            "MiniLM cos min": m["cos min"],
            "MiniLM b1 speed-up": m.get("b1 speed-up", "1.00x"),
            "MiniLM b32 speed-up": m.get("b32 speed-up", "1.00x"),
        })  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--schemes", nargs="*", default=list(DEMO_SCHEMES))
    p.add_argument("--min-time", type=float, default=2.0, help="seconds of MiniLM timing each")
    args = p.parse_args()
    print(machine())
    print(format_table(run(tuple(args.schemes), args.min_time), COLUMNS))


if __name__ == "__main__":
    main()
