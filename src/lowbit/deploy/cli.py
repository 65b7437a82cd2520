"""``lowbit bench``: float vs quantized latency in PyTorch and ONNX Runtime, from the shell.

    lowbit bench --task digits                          a demo CNN (trained in seconds)
    lowbit bench MODEL --calib X [--weights W] [--schemes W8A8 W4A16-g128] [--batch-size 32]

Exits with status 0 and prints a warning per variant that is not faster than float, naming the
layers that computed in float at that batch and the kernel each ran (``--strict``: status 3 when
there is any).
"""

from __future__ import annotations

import argparse
import json
import warnings

from lowbit.tasks import add_model_arguments

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="float vs quantized speed in PyTorch and ONNX Runtime")
    add_model_arguments(p, "inputs [N, ...]: calibration and the timed batch")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--schemes", nargs="+", help="presets (default: W8A8 W8A8-dynamic W4A16-g128)")
    p.add_argument("--no-onnx", action="store_true", help="PyTorch runtime only")
    p.add_argument("--compile", nargs="*", default=None, metavar="BACKEND",
                   help="also time lowbit.compile on these backends (inductor onnxruntime "
                        "openvino auto; bare --compile: all three)")  # fmt: skip
    p.add_argument("--min-time", type=float, default=0.5, help="seconds of timing per cell")
    p.add_argument("--json", help="also write the rows, float layers and kernels to this JSON file")
    p.add_argument("--strict", action="store_true", help="exit 3 if a variant is not faster")
    p.set_defaults(func=cmd_bench)


def _inputs(args):
    from lowbit.cli import _single_tensor, load_model, load_tensor_file
    from lowbit.errors import LowbitError

    if args.task:
        from lowbit.tasks import task_problem

        p = task_problem(args.task, batch=args.batch_size)
        return p.model, p.calibration
    if not args.model or not args.calib:
        raise LowbitError("give --task NAME, or MODEL with --calib inputs")
    model = load_model(args.model, args.weights)
    data = _single_tensor(load_tensor_file(args.calib), args.calib)
    return model, list(data.split(args.batch_size))


def _backends(flag: list[str] | None) -> tuple[str, ...]:
    """``--compile`` absent: none; bare: every backend; else the names given."""
    from lowbit.runtime import BACKENDS

    if flag is None:
        return ()
    return tuple(flag) if flag else BACKENDS


def cmd_bench(args: argparse.Namespace) -> int:
    from lowbit.deploy import DEFAULT_SCHEMES, SlowdownWarning, bench

    model, batches = _inputs(args)
    schemes = tuple(args.schemes) if args.schemes else DEFAULT_SCHEMES
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SlowdownWarning)
        result = bench(model, batches[0], schemes=schemes, calibration=batches[:8],
                       onnx=not args.no_onnx, min_time_s=args.min_time,
                       compile_backends=_backends(args.compile))  # fmt: skip
    print(result.to_markdown())
    slow = [w for w in caught if issubclass(w.category, SlowdownWarning)]
    for w in slow:
        print(f"\nWARNING: {w.message}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"rows": result.rows, "float_layers": result.float_layers,
                       "kernels": result.kernels, "machine": result.machine,
                       "notes": result.notes}, f, indent=2)  # fmt: skip
    return 3 if (args.strict and slow) else 0
