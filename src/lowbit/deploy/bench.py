"""``lowbit.bench``: float vs quantized in lowbit's PyTorch runtime, compiled, and in ONNX Runtime.

>>> result = lowbit.bench(model, example, calibration=batches)  # doctest: +SKIP
>>> print(result.to_markdown())  # doctest: +SKIP

Every variant is timed at batch 1 and at the example's batch size, next to the float model in the
same runtime and the same run (medians of repeated calls). Before timing, one untimed call per
batch size records the kernel each quantized layer really ran (:func:`record_kernels`): the
result names, per variant and batch, every layer whose weights went through a float-compute path
(dequantize + float GEMM/conv, the reference fallback, int8 codes on fp32 without VNNI) and the
layers the scheme left float; in ONNX Runtime, quantized layers its optimizer left on a float
kernel. A variant that is not faster than float gets a :class:`SlowdownWarning` naming them.
Variants compiled with :func:`lowbit.compile` (``compile_backends``) are timed beside the eager
ones, against the same float32 eager model.
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
from lowbit.nn.kernel_calls import record_kernels

__all__ = ["bench", "BenchResult", "SlowdownWarning", "DEFAULT_SCHEMES", "cell", "slowdown_message"]

DEFAULT_SCHEMES = ("W8A8", "W8A8-dynamic", "W4A16-g128")


class SlowdownWarning(UserWarning):
    """A quantized variant was not faster than float on this machine."""


@dataclass
class BenchResult:
    """Rows of ``variant, runtime, batch, ms, speed-up``; per ``"variant / runtime / batch N"``
    (see :func:`cell`) the layers that ran in float and a summary of the kernels that ran."""

    rows: list[dict] = field(default_factory=list)
    float_layers: dict[str, dict[str, str]] = field(default_factory=dict)
    kernels: dict[str, str] = field(default_factory=dict)
    machine: str = ""
    notes: list[str] = field(default_factory=list)  # e.g. a compile backend that cannot run

    def to_markdown(self) -> str:
        cols = ["variant", "runtime", "batch", "ms", "speed-up", "float layers", "kernels"]
        notes = "".join(f"\n\n{n}" for n in self.notes)
        return f"{format_table(self.rows, cols)}\n\n_{self.machine}; speed-up = float / variant " \
               "in the same runtime and run; float layers: quantized layers that computed in " \
               "float at that batch (dequantize + float GEMM/conv, reference fallback) and " \
               "layers left float; compiled:<backend> rows run lowbit.compile and compare " \
               f"with float32 eager PyTorch._{notes}"  # fmt: skip

    def slow(self) -> list[dict]:
        return [r for r in self.rows if r["variant"] != "float32" and r["speedup"] < 1.0]


def cell(variant: str, runtime: str, batch: int) -> str:
    """Key of :attr:`BenchResult.float_layers` and ``kernels``: ``"W8A8 / torch / batch 1"``."""
    return f"{variant} / {runtime} / batch {batch}"


def _record_torch(variants: dict[str, nn.Module], feed: tuple, batch: int, result) -> None:
    """One untimed call per quantized variant: the layers that ran in float (with the kernel
    each ran, or why the scheme left it float) and the kernel summary, at this batch."""
    for name, model in variants.items():
        if name == "float32":
            continue
        with torch.inference_mode(), record_kernels(model) as calls:
            model(*feed)
        layers = calls.float_layers()
        record = getattr(model, "lowbit_record", None)
        skipped = getattr(record, "skipped", {})
        layers.update({n: f"left float: {why}" for n, why in skipped.items()})
        result.float_layers[cell(name, "torch", batch)] = layers
        result.kernels[cell(name, "torch", batch)] = calls.summary()


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
    compile_backends: Sequence[str] = (),
    min_time_s: float = 0.5,
    warn: bool = True,
) -> BenchResult:
    """Time ``model`` (float) and each ``schemes`` variant at batch 1 and the example's batch.

    ``calibration``: batches for static schemes (default: the example batch). ``onnx``: also
    export each variant with :func:`lowbit.export_onnx` and time it in ONNX Runtime.
    ``compile_backends``: also run each variant through :func:`lowbit.compile` on these
    backends (``"inductor"``, ``"onnxruntime"``, ``"openvino"``; ``"auto"`` for the fastest);
    their rows (``runtime`` = ``"compiled:<backend>"``) are timed in the same rounds as the
    PyTorch variants, against float32 eager PyTorch. A backend that cannot run here is left out
    with its reason in ``notes``.
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
    runtimes["torch"].update(
        _compiled_runners(variants, args, calibration, compile_backends, batches, result)
    )
    with tempfile.TemporaryDirectory() as tmp:
        if onnx:
            runtimes["onnxruntime"] = _ort_runners(variants, args, calibration, Path(tmp),
                                                   batches, result)  # fmt: skip
        for runtime, runners in runtimes.items():
            for b in batches:
                feed = _slice(args, b)
                if runtime == "torch":
                    _record_torch(variants, feed, b, result)
                _time_cell(runners, feed, runtime, b, min_time_s, result)
    if warn:
        _warn_slow(result)
    return result


def _compiled_runners(variants, args, calibration, backends, batches, result) -> dict:
    """``{"W8A8 @ compiled:onnxruntime": runner}`` for every quantized variant and backend."""
    runners = {}
    for name, m in variants.items():
        if name == "float32":
            continue
        for backend in backends:
            label = f"{name} @ compiled:{backend}"
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    c = lowbit.compile(m, _slice(args, 1), backend=backend,
                                       calibration=calibration, measure_s=0.5)  # fmt: skip
            except lowbit.BackendUnavailableError as exc:
                result.notes.append(f"{name} was not compiled for {backend}: {exc}")
                continue
            for b in batches:
                result.kernels[cell(name, f"compiled:{backend}", b)] = (
                    f"lowbit.compile -> {c.backend}, built in {c.compile_s:.1f} s"
                )
            runners[label] = lambda feed, c=c: c(*feed)
    return runners


def _time_cell(runners: dict, feed: tuple, runtime: str, batch: int, min_time_s: float,
               result: BenchResult) -> None:  # fmt: skip
    """Time every variant on ``feed`` in interleaved rounds; one row each, ratio to float32."""
    fns = {name: (lambda r=run, f=feed: r(f)) for name, run in runners.items()}
    lat = compare_latency(fns, min_time_s=min_time_s)
    base = lat["float32"].median_ms
    for label in runners:
        name, _, compiled = label.partition(" @ ")
        ms, key = lat[label].median_ms, cell(name, compiled or runtime, batch)
        result.rows.append({"variant": name, "runtime": compiled or runtime, "batch": batch,
                            "ms": ms,
                            "speedup": base / ms, "speed-up": f"{base / ms:.2f}x",
                            "float layers": len(result.float_layers.get(key, {})),
                            "kernels": result.kernels.get(key, "")})  # fmt: skip


def _torch_runners(variants: dict[str, nn.Module]) -> dict:
    def runner(m):
        return lambda feed: m(*feed)

    return {name: runner(m) for name, m in variants.items()}


def _ort_runners(variants, args, calibration, tmp: Path, batches, result: BenchResult) -> dict:
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
        if name != "float32":  # ONNX Runtime's kernel choice does not depend on the batch here
            on_int = len(set(exp.layers) - set(layers))
            for b in batches:
                result.float_layers[cell(name, "onnxruntime", b)] = layers
                result.kernels[cell(name, "onnxruntime", b)] = (
                    f"{on_int} on integer kernels, {len(layers)} float"
                )

        def run(feed, s=sess, n=names):
            return s.run(None, {k: t.numpy() for k, t in zip(n, feed, strict=True)})

        runners[name] = run
    return runners


def _warn_slow(result: BenchResult) -> None:
    for r in result.slow():
        key = cell(r["variant"], r["runtime"], r["batch"])
        message = slowdown_message(r, result.float_layers.get(key, {}), result.kernels.get(key, ""))
        warnings.warn(message, SlowdownWarning, stacklevel=3)


def slowdown_message(row: dict, layers: dict[str, str], kernels: str = "") -> str:
    """The :class:`SlowdownWarning` text for a result row, naming its float layers and kernels.

    >>> row = {"variant": "W8A16", "runtime": "torch", "batch": 256, "speedup": 0.8}
    >>> slowdown_message(row, {"fc": "dequant+bf16 matmul at 256 rows"}).split(". ")[-1]
    'Layers computing in float there: fc (dequant+bf16 matmul at 256 rows).'
    """
    head = (f"{row['variant']} in {row['runtime']} at batch {row['batch']} runs at "
            f"{row['speedup']:.2f}x the float model's speed on this machine (not faster). ")  # fmt: skip
    if layers:
        named = ", ".join(f"{k} ({v})" for k, v in list(layers.items())[:8])
        more = f" and {len(layers) - 8} more" if len(layers) > 8 else ""
        return head + f"Layers computing in float there: {named}{more}."
    ran = f" ({kernels})" if kernels else ""
    return head + (f"Every quantized layer ran on an integer kernel there{ran}: those kernels "
                   "themselves are not faster at this size here.")  # fmt: skip
