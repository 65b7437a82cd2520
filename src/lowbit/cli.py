"""The ``lowbit`` command line.

    lowbit demo                                   train, quantize and measure two small CNNs
    lowbit presets                                list the preset schemes
    lowbit quantize MODEL --scheme W8A8 --calib DATA --out DIR [--weights FILE]
    lowbit auto (--task NAME | MODEL --calib DATA --evaluate FN) --out DIR
                                                  smallest model within --max-drop of float
    lowbit report (--task NAME | MODEL --calib DATA --evaluate FN) --out DIR
                                                  every scheme measured: Markdown, HTML, JSON
    lowbit bench (--task NAME | MODEL --calib DATA) [--schemes ...]
                                                  float vs quantized speed, PyTorch and ONNX Runtime
    lowbit info DIR                               describe a saved artifact

``MODEL`` names a factory that builds the float architecture: ``package.module:function`` or
``path/to/file.py:function`` (called with no arguments). ``--weights`` loads its state dict from a
``.safetensors`` file or a ``torch.save``'d state dict (read with ``weights_only=True``, so no
arbitrary pickle runs). ``DATA`` is a ``.safetensors``/``.pt``/``.npy`` file holding one tensor of
calibration inputs ``[N, ...]``, split into batches of ``--batch-size``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

import lowbit
from lowbit.deploy.cli import add_parser as add_bench_parser
from lowbit.errors import LowbitError
from lowbit.ptq import ALGORITHMS
from lowbit.reporting.cli import add_parser as add_report_parser
from lowbit.search.cli import add_parser as add_auto_parser
from lowbit.tasks import TASKS

__all__ = ["main", "load_factory", "load_model", "load_tensor_file"]


def load_factory(spec: str) -> Callable[[], nn.Module]:
    """Resolve ``module:function`` or ``file.py:function`` to a callable."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise LowbitError(
            f"MODEL must look like 'package.module:factory' or 'file.py:factory', got {spec!r}"
        )
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise LowbitError(f"model file {path} does not exist")
        mod_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise LowbitError(f"{target} has no callable {attr!r}")
    return factory


def load_tensor_file(path: str | Path) -> torch.Tensor | dict[str, torch.Tensor]:
    """Read ``.safetensors``, ``.npy`` or ``.pt`` (tensors only, ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise LowbitError(f"{path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix == ".npy":
        import numpy as np

        return torch.from_numpy(np.load(path, allow_pickle=False))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        raise LowbitError(f"cannot read {path} as tensors: {exc}") from None


def _single_tensor(data: object, path: str) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        return data
    if isinstance(data, dict) and len(data) == 1:
        return next(iter(data.values()))
    raise LowbitError(f"{path} must hold exactly one tensor of calibration inputs [N, ...]")


def _cmd_demo(args: argparse.Namespace) -> int:
    from lowbit.demo import DEMO_SCHEMES, format_demo, run_demo

    print(
        f"lowbit {lowbit.__version__} demo: a 2-D CNN on scikit-learn's bundled 8x8 digits and a "
        "1-D CNN on MNIST-1D (generated locally), each quantized with every scheme"
    )
    schemes = tuple(args.schemes) if args.schemes else DEMO_SCHEMES
    rows = run_demo(tasks=tuple(args.tasks), schemes=schemes, epochs=args.epochs, seed=args.seed)
    print(format_demo(rows))
    print(
        "Post-training quantization: round to nearest unless a variant names an algorithm "
        "(PRESET+algorithm); the 'auto' row is lowbit.auto's mixed-precision choice within 1 "
        "point of float (chosen on a validation split held out of training, 60 s budget; "
        "accuracies are on the test set). Sizes are artifact bytes on disk; bits/weight counts "
        "codes, scales, zero points and codebooks of the quantized layers; 'layers left float' "
        "(k of n) are layers a scheme could not take (e.g. a group size that does not divide "
        "them). Latencies are medians for one batch of 256 test inputs, float32 and every "
        "variant timed in interleaved rounds of this run."
    )
    if args.out:
        from lowbit.reporting.cli import write_report

        task = args.tasks[0]  # the demo's first task (digits by default)
        out = write_report(task, args.out, seed=args.seed)
        print(f"\nThe measured report for the {task} CNN: {out}/report.md, report.html, "
              "report.json (every table, the plots, the machine and versions).")  # fmt: skip
    return 0


def _cmd_presets(_args: argparse.Namespace) -> int:
    for name in lowbit.preset_names():
        print(f"{name:14s} {json.dumps(lowbit.get_preset(name).to_dict())}")
    return 0


def load_model(spec: str, weights: str | None) -> nn.Module:
    """The float model ``spec`` builds, with the state dict in ``weights`` when given."""
    model = load_factory(spec)()
    if not isinstance(model, nn.Module):
        raise LowbitError(f"{spec} returned {type(model).__name__}, not an nn.Module")
    if weights:
        state = load_tensor_file(weights)
        if not isinstance(state, dict):
            raise LowbitError(f"{weights} must hold a state dict")
        model.load_state_dict(state)
    return model


def _cmd_quantize(args: argparse.Namespace) -> int:
    model = load_model(args.model, args.weights)
    calibration = None
    if args.calib:
        data = _single_tensor(load_tensor_file(args.calib), args.calib)
        calibration = list(data.float().split(args.batch_size))
    qmodel = lowbit.quantize(
        model,
        args.scheme,
        calibration=calibration,
        exclude=args.exclude or None,
        algorithm=args.algorithm,
        progress=True,
    )
    out = lowbit.save(qmodel, args.out)
    size, float_size = lowbit.artifact_size(out), lowbit.model_size(model)
    print(
        f"wrote {out} ({size:,} bytes, {float_size / size:.2f}x smaller than float32); "
        f"{len(qmodel.lowbit_record.layers)} layers quantized, "
        f"{len(qmodel.lowbit_record.skipped)} kept in float"
    )
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from lowbit.serialization import _read_meta

    meta = _read_meta(Path(args.artifact))  # the loader's checks: a clear error, no traceback
    print(
        f"{args.artifact}: {lowbit.artifact_size(args.artifact):,} bytes, format "
        f"v{meta['format_version']}, tensors in {meta['_tensor_path'].name}"
    )
    for name, spec in meta["layers"].items():
        print(f"  {name}: {spec.get('type')} {(spec.get('scheme') or {}).get('name')}")
    for name, reason in meta["skipped"].items():
        print(f"  {name}: float ({reason})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lowbit", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log what lowbit does")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train, quantize and measure two small CNNs")
    demo.add_argument("--tasks", nargs="+", default=["digits", "mnist1d"], choices=sorted(TASKS))
    demo.add_argument(
        "--schemes",
        nargs="+",
        help="presets to compare, or PRESET+ALGORITHM variants such as W4A8+adaround (default: all)",
    )
    demo.add_argument("--epochs", type=int, default=None, help="training epochs (task default)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="lowbit-demo-report",
                      help="where to write the first task's report ('' to skip)")  # fmt: skip
    demo.set_defaults(func=_cmd_demo)
    sub.add_parser("presets", help="list preset schemes").set_defaults(func=_cmd_presets)
    q = sub.add_parser("quantize", help="quantize a saved PyTorch model")
    q.add_argument("model", help="factory: 'package.module:fn' or 'file.py:fn'")
    q.add_argument("--weights", help="state dict (.safetensors or .pt) to load into the model")
    q.add_argument("--scheme", default="W8A8-dynamic", help="preset name (see `lowbit presets`)")
    q.add_argument("--calib", help="calibration inputs [N, ...] (.safetensors, .npy or .pt)")
    q.add_argument("--batch-size", type=int, default=32)
    q.add_argument("--exclude", action="append", help="module-name glob to keep in float")
    q.add_argument(
        "--algorithm",
        nargs="+",
        choices=ALGORITHMS,
        help="PTQ error correction applied in order, e.g. --algorithm cle adaround (needs --calib)",
    )
    q.add_argument("--out", required=True, help="output artifact directory")
    q.set_defaults(func=_cmd_quantize)
    add_auto_parser(sub)
    add_report_parser(sub)
    add_bench_parser(sub)
    info = sub.add_parser("info", help="describe a saved artifact")
    info.add_argument("artifact")
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except LowbitError as exc:
        print(f"lowbit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
