"""Where a number was measured: CPU, ISA flags, cores, library versions and the date.

>>> sorted(machine_info())[:3]
['cores', 'cpu', 'date']
"""

from __future__ import annotations

import os
import platform
from datetime import date
from pathlib import Path

import torch

__all__ = ["machine_info", "describe_machine"]

_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8")


def machine_info() -> dict[str, object]:
    """CPU model and the ISA flags lowbit's kernels care about (from /proc/cpuinfo on Linux)."""
    cpu, flags = platform.processor() or platform.machine(), []
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
        names = [ln.split(":", 1)[1].strip() for ln in text.splitlines()
                 if ln.startswith("model name")]  # fmt: skip
        cpu = names[0] if names else cpu
        words = set(text.split())
        flags = [f for f in _FLAGS if f in words]
    except OSError:
        pass
    return {
        "cpu": cpu,
        "isa": flags,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "os": platform.platform(),
        "date": date.today().isoformat(),
    }


def describe_machine() -> str:
    """One line: ``AMD EPYC, 2 cores (2 torch threads), avx2, torch 2.13.0+cpu, 2026-11-28``."""
    m = machine_info()
    isa = "/".join(m["isa"]) or "no AVX2/AVX-512 flags found"
    return (f"{m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), {isa}, "
            f"torch {m['torch']}, {m['date']}")  # fmt: skip
