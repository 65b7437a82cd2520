"""Which kernel each quantized layer really ran, call by call, and whether it computed on integers.

A layer's ``kernel`` string describes the path chosen at load; the path a *call* takes can also
depend on the input (weight-only Linear layers switch from the int8/int4 weight-pack kernels to
dequantize + bf16 GEMM at ``cpu.WEIGHT_ONLY_DEQUANT_MIN_ROWS`` rows). So every forward leaves a
:class:`KernelPath` and its row count in ``layer.last_call``, and :func:`record_kernels` collects
them per layer while a model runs:

>>> with record_kernels(qmodel) as calls:  # doctest: +SKIP
...     qmodel(x)
>>> calls.layers  # doctest: +SKIP
{'0': {256: KernelPath(name='dequant+bf16 matmul', compute='float')}, ...}

``compute`` is ``"int"`` when the kernel reads the stored integer codes themselves (int8 x int8
-> int32 GEMM/conv, or a weight-pack kernel that converts int8/int4 codes inside the kernel next
to bf16 activations, no float weight in memory; an embedding lookup of the integer table) and
``"float"`` when a float weight goes through a float GEMM/conv (dequantized per call or at load,
the reference oracle, integer codes converted to fp32 where the int8 instructions are missing,
and 16-bit cast layers).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = [
    "KernelPath",
    "KernelCalls",
    "record_kernels",
    "dtype_name",
    "INT8_INT_MM",
    "INT8_FP32_GEMM",
    "INT8_WEIGHT_PACK",
    "INT4_WEIGHT_PACK",
    "INT8_ONEDNN_CONV",
    "INT8_FP32_CONV",
    "INT8_GATHER",
    "CODE_GATHER",
    "REFERENCE_FP32_MATMUL",
    "REFERENCE_FP64_MATMUL",
    "REFERENCE_FP64_CONV",
    "dequant",
    "dequant_at_load",
    "cast",
]


@dataclass(frozen=True)
class KernelPath:
    """A short stable kernel name and whether it computes on the integer codes (``"int"``)."""

    name: str
    compute: str  # "int" | "float"

    @property
    def is_float(self) -> bool:
        return self.compute == "float"


INT8_INT_MM = KernelPath("int8 _int_mm", "int")
# exact: every partial sum of 8-bit products stays below 2^24 (cpu._EXACT_FP32_CHUNK)
INT8_FP32_GEMM = KernelPath("int8 codes on fp32 GEMM (no VNNI)", "float")
INT8_WEIGHT_PACK = KernelPath("int8 _weight_int8pack_mm", "int")
INT4_WEIGHT_PACK = KernelPath("int4 _weight_int4pack_mm", "int")
INT8_ONEDNN_CONV = KernelPath("int8 oneDNN qconv", "int")
INT8_FP32_CONV = KernelPath("int8 codes on fp32 conv (no VNNI)", "float")
INT8_GATHER = KernelPath("int gather + row scale", "int")
CODE_GATHER = KernelPath("gather code rows + dequantize", "int")
REFERENCE_FP32_MATMUL = KernelPath("reference fp32 matmul", "float")
REFERENCE_FP64_MATMUL = KernelPath("reference fp64 matmul", "float")
REFERENCE_FP64_CONV = KernelPath("reference fp64 conv", "float")


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bf16"``, ``torch.float16`` -> ``"fp16"``, else ``"fp32"``."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def dequant(dtype: torch.dtype, op: str) -> KernelPath:
    """Weight dequantized on every call, then a float ``op`` ("matmul" or "conv")."""
    return KernelPath(f"dequant+{dtype_name(dtype)} {op}", "float")


def dequant_at_load(dtype: torch.dtype) -> KernelPath:
    """Weight dequantized once at load (its int8 expansion would lose accuracy), float GEMM."""
    return KernelPath(f"{dtype_name(dtype)} matmul on weights dequantized at load", "float")


def cast(compute: torch.dtype, stored: torch.dtype, op: str) -> KernelPath:
    """A 16-bit cast layer: ``op`` in ``compute`` dtype on weights stored as ``stored``."""
    return KernelPath(f"{dtype_name(compute)} {op} on {dtype_name(stored)} weights", "float")


@dataclass
class KernelCalls:
    """``layers[name][rows]``: the path each layer took for inputs of that many rows.

    Rows are a Linear's tokens (all leading dims), a conv's batch x input positions, an
    embedding's ids.
    """

    layers: dict[str, dict[int, KernelPath]] = field(default_factory=dict)

    def float_layers(self) -> dict[str, str]:
        """Layers that ran a float-compute path: ``{name: "dequant+bf16 matmul at 256 rows"}``."""
        out = {}
        for name, calls in self.layers.items():
            floats = [f"{p.name} at {_rows(r)}" for r, p in sorted(calls.items()) if p.is_float]
            if floats:
                out[name] = "; ".join(floats)
        return out

    def summary(self) -> str:
        """Layers per kernel, integer paths first, float ones with the rows they ran at:
        ``"12 int8 _int_mm, 2 dequant+bf16 matmul (256 rows)"``.

        A layer called with several row counts counts once per distinct path it took.
        """
        layers: dict[KernelPath, int] = {}
        rows: dict[KernelPath, list[int]] = {}
        for calls in self.layers.values():
            for path in set(calls.values()):
                layers[path] = layers.get(path, 0) + 1
            for r, path in calls.items():
                rows.setdefault(path, []).append(r)
        order = sorted(layers, key=lambda p: (p.is_float, -layers[p], p.name))
        return ", ".join(f"{layers[p]} {p.name}" + _span(rows[p], p.is_float) for p in order)


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _span(rows: list[int], show: bool) -> str:
    """`` (256 rows)``, `` (36-1024 rows)``, or nothing when ``show`` is False."""
    if not show:
        return ""
    lo, hi = min(rows), max(rows)
    return f" ({_rows(lo)})" if lo == hi else f" ({lo}-{hi} rows)"


@contextmanager
def record_kernels(model: nn.Module) -> Iterator[KernelCalls]:
    """Collect the path of every quantized layer's calls while the block runs.

    Forward hooks read ``last_call`` after each call; they are removed on exit, so timing
    outside the block pays nothing for this.
    """
    from lowbit.nn.base import QuantModule

    calls = KernelCalls()

    def hook(name):
        def read(module, _inputs, _output):
            call = getattr(module, "last_call", None)
            if call is not None:
                path, rows = call
                calls.layers.setdefault(name, {})[rows] = path

        return read

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, QuantModule)]  # fmt: skip
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()
