"""W8A8 convolutions on a CPU without VNNI (issue 19): no slower than float?

Re-runs itself with ``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN then runs what an AVX2-only CPU runs, and
lowbit sees no VNNI), and times, interleaved, float32 eager and lowbit's W8A8 / W8A8-dynamic
models (their convs as one fp32 conv on the int8 codes) on the demo CNN, timm ResNet-18 and
single 3x3 convs, at batch 1 and 8.

Usage: ``python -m benchmarks.bench_no_vnni``
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch

ISA = "AVX2"


def _models():
    from lowbit.compat import import_timm
    from lowbit.tasks import task_problem

    torch.manual_seed(0)
    p = task_problem("digits")
    yield "digits CNN", p.model, [p.split.x_test[:64]], p.split.x_test[:8]
    timm = import_timm()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, 224, 224, generator=g)
    yield "ResNet-18", timm.create_model("resnet18").eval(), [x], x
    for c, hw in ((64, 56), (256, 14)):
        conv = torch.nn.Sequential(torch.nn.Conv2d(c, c, 3, padding=1), torch.nn.ReLU()).eval()
        x = torch.randn(8, c, hw, hw, generator=g)
        yield f"conv {c}x{c} 3x3 @ {hw}x{hw}", conv, [x], x


def run() -> None:
    import lowbit
    from lowbit.kernels import cpu
    from lowbit.measure.latency import compare_latency
    from lowbit.measure.table import format_table

    print(f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA')}: has_vnni="
          f"{cpu.has_vnni()}, exact oneDNN int8 conv={cpu.onednn_qconv_exact()}")  # fmt: skip
    rows = []
    for name, model, calib, x in _models():
        variants = {"float32": model}
        for scheme in ("W8A8", "W8A8-dynamic"):
            variants[scheme] = lowbit.quantize(model, scheme, calibration=calib)
        kernel = next(m.kernel for m in variants["W8A8"].modules() if hasattr(m, "kernel")
                      and "conv" in m.kernel)  # fmt: skip
        for b in (1, 8):
            xs = x[:b]
            with torch.inference_mode():
                lat = compare_latency({k: (lambda m=m, xs=xs: m(xs)) for k, m in variants.items()},
                                      rounds=5, min_time_s=2.0)  # fmt: skip
            base = lat["float32"].median_ms
            row = {"model": name, "batch": b, "float32 ms": round(base, 3)}
            for k in ("W8A8", "W8A8-dynamic"):
                row[f"{k} vs float"] = f"{base / lat[k].median_ms:.2f}x"
            rows.append({**row, "conv kernel": kernel[:60]})
    print(format_table(rows, list(rows[0])))


def main() -> None:
    if os.environ.get("ONEDNN_MAX_CPU_ISA") != ISA:
        env = {**os.environ, "ONEDNN_MAX_CPU_ISA": ISA}
        sys.exit(subprocess.call([sys.executable, "-m", "benchmarks.bench_no_vnni"], env=env))
    from benchmarks.common import machine

    print(machine())
    run()


if __name__ == "__main__":
    main()
