"""Any timm image classifier: quantize, check fidelity, export to ONNX, time it (one command).

    .venv/bin/python examples/timm_classifier.py                      # resnet18, about 1 minute
    .venv/bin/python examples/timm_classifier.py --model convnext_atto --schemes W8A8 W4A16

No weights can be downloaded here, so the model has random weights and fidelity is the output
SQNR against the float model on random images (a pretrained checkpoint loads the same way with
``pretrained=True`` where the hub is reachable). For each scheme: layers quantized and left in
float (with the reason), output SQNR, artifact size; then ``lowbit.bench`` times float and the
first scheme in PyTorch and in ONNX Runtime in the same run (warning if it is not faster).
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import torch

import lowbit
from lowbit.compat import import_timm
from lowbit.measure import format_table, sqnr_db


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet18", help="a timm model name")
    parser.add_argument("--schemes", nargs="+", default=["W8A8", "W4A16"])
    parser.add_argument("--no-bench", action="store_true", help="skip the latency comparison")
    args = parser.parse_args()
    timm = import_timm()  # works beside a torchvision without compiled ops
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval()
    size = model.pretrained_cfg.get("input_size", (3, 224, 224))
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(4, *size, generator=g) for _ in range(4)]
    x = torch.randn(4, *size, generator=g)
    with torch.no_grad():
        ref = model(x)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scheme in args.schemes:
            q = lowbit.quantize(model, scheme, calibration=calib)
            with torch.no_grad():
                out = q(x)
            path = lowbit.save(q, Path(tmp) / scheme)
            rec = q.lowbit_record
            rows.append({"scheme": scheme, "quantized layers": len(rec.layers),
                         "layers left float": len(rec.skipped), "output SQNR dB": sqnr_db(ref, out),
                         "size KiB": sum(f.stat().st_size for f in path.iterdir()) / 1024})  # fmt: skip
            for name, why in rec.skipped.items():
                print(f"{scheme}: {name} stays float: {why}")
    print(format_table(rows, list(rows[0])))
    if not args.no_bench:
        with warnings.catch_warnings():
            warnings.simplefilter("always", lowbit.SlowdownWarning)
            result = lowbit.bench(model, calib[0], schemes=args.schemes[:1], calibration=calib)
        print(result.to_markdown())


if __name__ == "__main__":
    main()
