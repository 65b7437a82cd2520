"""Shared helpers for the benchmark scripts: interleaved timing and the machine description."""

from __future__ import annotations

import os
import platform
from datetime import date

import torch

from lowbit.measure import measure_latency


def machine() -> str:
    """One line describing where the numbers were taken."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
        flags = open("/proc/cpuinfo").read()
        isa = [f for f in ("avx512_vnni", "avx512_bf16", "amx_int8") if f in flags]
    except OSError:
        isa = []
    return (
        f"{cpu}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), "
        f"{'/'.join(isa) or 'no AVX-512 VNNI/BF16'}, torch {torch.__version__}, "
        f"{date.today().isoformat()}"
    )


def time_pair(float_fn, quant_fn, min_time_s: float = 1.0, rounds: int = 3):
    """Median latencies (ms) of the float and quantized callables, interleaved over ``rounds``.

    Interleaving spreads machine noise (other processes, frequency changes) over both sides.
    """
    f_times, q_times = [], []
    for _ in range(rounds):
        f_times.append(measure_latency(float_fn, min_time_s=min_time_s / rounds).median_ms)
        q_times.append(measure_latency(quant_fn, min_time_s=min_time_s / rounds).median_ms)
    f_times.sort()
    q_times.sort()
    return f_times[len(f_times) // 2], q_times[len(q_times) // 2]
