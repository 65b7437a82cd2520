"""``lowbit.bench``: float vs quantized, in lowbit's PyTorch runtime and in ONNX Runtime, one run.

>>> result = lowbit.bench(model, example, calibration=batches)  # doctest: +SKIP
>>> print(result.to_markdown())  # doctest: +SKIP

Every variant is timed at batch 1 and at the example's batch size, next to the float model in the
same runtime and the same run (medians of repeated calls). A quantized variant that is not
faster than float there gets a :class:`SlowdownWarning` naming the layers that ran in float: in
PyTorch, layers whose quantized kernel fell back to the reference path and layers the scheme
left float; in ONNX Runtime, quantized layers its optimizer left on a float kernel.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import lowbit
from lowbit.errors import ConfigError
from lowbit.measure.latency import compare_latency
from lowbit.measure.machine import describe_machine
from lowbit.measure.table import format_table
from lowbit.nn import QuantModule

__all__ = ["bench", "BenchResult", "SlowdownWarning", "DEFAULT_SCHEMES"]

DEFAULT_SCHEMES = ("W8A8", "W8A8-dynamic", "W4A16-g128")


class SlowdownWarning(UserWarning):
    """A quantized variant was not faster than float on this machine."""


@dataclass
class BenchResult:
    """Rows of ``variant, runtime, batch, ms, speed-up`` plus the float layers of each variant."""

    rows: list[dict] = field(default_factory=list)
    float_layers: dict[str, dict[str, str]] = field(default_factory=dict)
    machine: str = ""

    def to_markdown(self) -> str:
        cols = ["variant", "runtime", "batch", "ms", "speed-up", "float layers"]
        return f"{format_table(self.rows, cols)}\n\n_{self.machine}; speed-up = float / variant " \
               "in the same runtime and run._"  # fmt: skip

    def slow(self) -> list[dict]:
        return [r for r in self.rows if r["variant"] != "float32" and r["speedup"] < 1.0]


def _torch_float_layers(model: nn.Module) -> dict[str, str]:
    out = {n: m.kernel for n, m in model.named_modules()
           if isinstance(m, QuantModule) and m.kernel.startswith("reference")}  # fmt: skip
    record = getattr(model, "lowbit_record", None)
    out.update({n: f"left float: {why}" for n, why in getattr(record, "skipped", {}).items()})
    return out


def _slice(args: tuple, n: int) -> tuple:
    return tuple(a[:n] for a in args)


def _as_args(x) -> tuple:
    return (x,) if isinstance(x, torch.Tensor) else tuple(x)


def bench(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    schemes: Sequence[str] = DEFAULT_SCHEMES,
    calibration: Iterable | None = None,
    onnx: bool = True,
    min_time_s: float = 0.5,
    warn: bool = True,
) -> BenchResult:
    """Time ``model`` (float) and each ``schemes`` variant at batch 1 and the example's batch.

    ``calibration``: batches for static schemes (default: the example batch). ``onnx``: also
    export each variant with :func:`lowbit.export_onnx` and time it in ONNX Runtime.
    """
    args = _as_args(example_inputs)
    if not args or not all(isinstance(a, torch.Tensor) for a in args):
        raise ConfigError("example_inputs must be a tensor or a tuple of tensors (one batch)")
    calibration = list(calibration) if calibration is not None else [args]
    variants: dict[str, nn.Module] = {"float32": model.eval()}
    for name in schemes:
        variants[name] = lowbit.quantize(model, name, calibration=calibration)
    batches = sorted({1, int(args[0].shape[0])})
    result = BenchResult(machine=describe_machine())
    runtimes = {"torch": _torch_runners(variants)}
    for name, m in variants.items():
        result.float_layers[f"{name} / torch"] = _torch_float_layers(m)
    with tempfile.TemporaryDirectory() as tmp:
        if onnx:
            runtimes["onnxruntime"] = _ort_runners(variants, args, calibration, Path(tmp), result)
        for runtime, runners in runtimes.items():
            for b in batches:
                feed = _slice(args, b)
                fns = {name: (lambda r=run, f=feed: r(f)) for name, run in runners.items()}
                lat = compare_latency(fns, min_time_s=min_time_s)
                base = lat["float32"].median_ms
                for name in runners:
                    ms = lat[name].median_ms
                    layers = result.float_layers.get(f"{name} / {runtime}", {})
                    result.rows.append({"variant": name, "runtime": runtime, "batch": b,
                                        "ms": ms, "speedup": base / ms,
                                        "speed-up": f"{base / ms:.2f}x",
                                        "float layers": len(layers)})  # fmt: skip
    if warn:
        _warn_slow(result)
    return result


def _torch_runners(variants: dict[str, nn.Module]) -> dict:
    def runner(m):
        return lambda feed: m(*feed)

    return {name: runner(m) for name, m in variants.items()}


def _ort_runners(variants, args, calibration, tmp: Path, result: BenchResult) -> dict:
    from lowbit.export import export_onnx
    from lowbit.export.ort import float_layers, ort_session

    runners = {}
    for name, m in variants.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            exp = export_onnx(m, tmp / f"{name}.onnx", args, calibration=calibration)
        sess, ops = ort_session(exp.path)
        names = [i.name for i in sess.get_inputs()]
        quantized = list(exp.layers)
        layers = {k: f"ONNX Runtime {v}" for k, v in float_layers(ops, quantized).items()}
        layers.update(exp.float_layers)
        result.float_layers[f"{name} / onnxruntime"] = layers if name != "float32" else {}

        def run(feed, s=sess, n=names):
            return s.run(None, {k: t.numpy() for k, t in zip(n, feed, strict=True)})

        runners[name] = run
    return runners


def _warn_slow(result: BenchResult) -> None:
    for r in result.slow():
        layers = result.float_layers.get(f"{r['variant']} / {r['runtime']}", {})
        named = ", ".join(f"{k} ({v})" for k, v in list(layers.items())[:8])
        more = f" and {len(layers) - 8} more" if len(layers) > 8 else ""
        warnings.warn(
            f"{r['variant']} in {r['runtime']} at batch {r['batch']} runs at "
            f"{r['speedup']:.2f}x the float model's speed on this machine (not faster). "
            + (f"Layers in float there: {named}{more}." if layers else
               "No layer fell back to float: the integer kernels themselves are not faster "
               "at this size here."),
            SlowdownWarning,
            stacklevel=3,
        )  # fmt: skip
