"""The no-VNNI kernels (AVX2-only CPUs), run here by capping oneDNN's ISA at AVX2.

``ONEDNN_MAX_CPU_ISA=AVX2`` makes oneDNN run the int8 kernels an AVX2-only CPU runs (whose int16
pair sums saturate), so the kernel suites exercise lowbit's no-VNNI paths on any x86 machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUITES = ["tests/kernels/test_kernels_cpu.py", "tests/nn/test_qconv.py",
          "tests/nn/test_qlinear.py", "tests/nn/test_kernel_calls.py"]  # fmt: skip


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip


def test_capped_at_avx2_lowbit_sees_no_vnni_and_no_exact_int8_conv():
    probe = "from lowbit.kernels import cpu; print(cpu.has_vnni(), cpu.onednn_qconv_exact())"
    r = _run(["-c", probe])
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["False", "False"]


def test_the_kernel_suites_pass_on_the_no_vnni_paths():
    r = _run(["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-W", "ignore", *SUITES])
    assert r.returncode == 0, r.stdout[-4000:]
