"""Run every benchmark in turn (about 80 minutes on 2 cores) and print their tables.

Usage: ``python benchmarks/run_all.py`` (or ``make bench``). Copy the output into RESULTS.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = [
    ["benchmarks.bench_linear"],
    ["benchmarks.bench_demo"],
    ["benchmarks.bench_minilm", "--compile"],
    ["benchmarks.bench_lowbit"],
    ["benchmarks.bench_grids"],
    ["benchmarks.bench_qat"],
    ["benchmarks.bench_ptq", "--seeds", "2"],
    ["benchmarks.bench_auto", "--seeds", "2"],
    ["benchmarks.bench_report"],
    ["benchmarks.bench_onnx"],
    ["benchmarks.bench_runtime"],
    ["benchmarks.bench_no_vnni"],
    ["benchmarks.bench_coverage"],
    ["benchmarks.bench_detection"],
]

if __name__ == "__main__":
    for args in SCRIPTS:
        print(f"\n## python -m {' '.join(args)}\n", flush=True)
        subprocess.run([sys.executable, "-m", *args], cwd=ROOT, check=True)
