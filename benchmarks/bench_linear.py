"""nn.Linear 4096->4096 and 4096->11008: float32 against every integer and low-bit scheme.

Batch 1 (one token) and a 128-token batch. Float and quantized are timed in the same process,
interleaved, and reported as ratios. ``NF4 (LUT per call)`` is the road not taken for
non-uniform formats: dequantize the codes through the lookup table on every call, then a bf16
GEMM; lowbit instead expands the codes to int8 once at load and runs the int8 kernel.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import lowbit
from benchmarks.common import machine, time_pair
from lowbit.measure import format_table

SCHEMES = (
    "W8A8-dynamic", "W8A8", "W8A16", "W4A16-g128", "W4A16", "W3A16-g128", "W2A16-g64", "W4A8",
    "NF4", "NF4 (LUT per call)", "KMEANS16", "BINARY", "BF16", "FP16",
)  # fmt: skip


class _LutPerCall(nn.Module):
    """Dequantize ``q``'s codes through the lookup table on every call, then a bf16 matmul."""

    def __init__(self, q):
        super().__init__()
        self.q, self.kernel = q, "levels[codes] * scales per call + bf16 GEMM"

    def forward(self, x):
        w = self.q.dequantized_weight().to(torch.bfloat16)
        return nn.functional.linear(x.to(torch.bfloat16), w, self.q.bias.bfloat16()).float()


def _build(layer, scheme, calib):
    if scheme == "NF4 (LUT per call)":
        return _LutPerCall(lowbit.quantize(layer, "NF4"))
    return lowbit.quantize(layer, scheme, calibration=calib)


def run(shapes=((4096, 4096), (4096, 11008)), rows_list=(1, 128), min_time_s=1.0, schemes=SCHEMES):
    torch.manual_seed(0)
    results = []
    for k, n in shapes:
        layer = nn.Linear(k, n).eval()
        calib = [torch.randn(128, k)]
        for scheme in schemes:
            q = _build(layer, scheme, calib)
            for m in rows_list:
                x = torch.randn(m, k)
                with torch.inference_mode():
                    f_ms, q_ms = time_pair(
                        lambda f=layer, x=x: f(x), lambda q=q, x=x: q(x), min_time_s=min_time_s
                    )
                results.append(
                    {
                        "shape": f"{k}->{n}",
                        "rows": m,
                        "scheme": scheme,
                        "float32 ms": f_ms,
                        "quant ms": q_ms,
                        "speed-up": f"{f_ms / q_ms:.2f}x",
                        "kernel": q.kernel,
                    }
                )
    return results


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--min-time", type=float, default=1.0)
    p.add_argument("--schemes", nargs="*", default=list(SCHEMES))
    args = p.parse_args()
    print(machine())
    rows = run(min_time_s=args.min_time, schemes=tuple(args.schemes))
    print(
        format_table(
            rows, ["shape", "rows", "scheme", "float32 ms", "quant ms", "speed-up", "kernel"]
        )
    )


if __name__ == "__main__":
    main()
