"""ONNX Runtime side: sessions, what its optimizer made of each layer, and its own quantizer.

ONNX Runtime rewrites a QDQ graph when the session starts (``QLinearConv``, ``QGemm``,
``MatMulIntegerToFloat``...). :func:`ort_layer_ops` reads the optimized graph back and maps each
compute node to the layer it came from (the TorchScript exporter names nodes after module
scopes, e.g. ``/features/features.0/Conv``), so a layer that ended up in a float kernel can be
named.

>>> sess, ops = ort_session("model.onnx")  # doctest: +SKIP
>>> ops["features.0"]  # doctest: +SKIP
['QLinearConv']
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "INTEGER_OPS",
    "FLOAT_OPS",
    "ort_session",
    "ort_optimized",
    "ort_layer_ops",
    "float_layers",
    "ort_quantize",
]

# ONNX Runtime kernels that compute on integer codes
INTEGER_OPS = {
    "QLinearConv", "QLinearMatMul", "QGemm", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
    "MatMulInteger", "ConvInteger", "MatMulNBits", "QAttention", "DynamicQuantizeLSTM",
    "QEmbedLayerNormalization", "GatherBlockQuantized",
}  # fmt: skip
# float kernels that do a layer's main work (their presence for a quantized layer is a fallback)
FLOAT_OPS = {"Conv", "FusedConv", "MatMul", "Gemm", "FusedMatMul", "FusedGemm"}


def ort_session(path: str | os.PathLike, threads: int | None = None):
    """An ONNX Runtime CPU session on ``path`` and ``{layer scope: [ops]}`` of its optimized graph."""
    sess, optimized = ort_optimized(path, threads)
    return sess, ort_layer_ops(optimized)


def ort_optimized(path: str | os.PathLike, threads: int | None = None):
    """``(session, optimized ModelProto)``: the graph ONNX Runtime really runs for ``path``
    (its fusions applied: ``QLinearConv``, ``QGemm``...), read back from a temp file."""
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory() as tmp:
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return sess, onnx.load(opts.optimized_model_filepath)


def _scope(node_name: str) -> str:
    """``/encoder/layer.0/attention/self/query/MatMul_token_3`` -> ``encoder/layer.0/.../query``."""
    parts = node_name.strip("/").split("/")
    return "/".join(parts[:-1])


def ort_layer_ops(optimized) -> dict[str, list[str]]:
    """``{scope: [compute op types]}`` for the integer and float compute nodes of a graph."""
    found: dict[str, list[str]] = defaultdict(list)
    for node in optimized.graph.node:
        if node.op_type in INTEGER_OPS or node.op_type in FLOAT_OPS:
            found[_scope(node.name)].append(node.op_type)
    return dict(found)


def _layer_of(scope: str, layers: Iterable[str]) -> str | None:
    """The layer name a node scope belongs to: its last component, or the dotted path."""
    parts = scope.split("/")
    names = set(layers)
    for part in reversed(parts):
        if part in names:
            return part
    dotted = ".".join(parts)
    return next((n for n in names if dotted.endswith(n)), None)


def float_layers(layer_ops: dict[str, list[str]], quantized: Sequence[str]) -> dict[str, str]:
    """Quantized layers that ONNX Runtime runs on a float kernel: ``{layer: op types}``."""
    out: dict[str, str] = {}
    for scope, ops in layer_ops.items():
        layer = _layer_of(scope, quantized)
        if layer is None:
            continue
        if not any(op in INTEGER_OPS for op in ops):
            out[layer] = ",".join(sorted(set(ops)))
    return out


def ort_quantize(
    float_path: str | os.PathLike,
    out_path: str | os.PathLike,
    mode: str,
    calibration: Sequence[dict] | None = None,
) -> Path:
    """ONNX Runtime's own quantizer on a float ONNX file, for side-by-side comparisons.

    ``mode="static"``: ``quantize_static`` in QDQ format, per-channel int8 weights, uint8
    activations, min/max calibration on ``calibration`` feeds. ``mode="dynamic"``:
    ``quantize_dynamic`` (int8 weights, activations quantized at run time).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if mode not in ("static", "dynamic") or (mode == "static" and not calibration):
        raise ValueError("ort_quantize takes mode 'static' with calibration feeds, or 'dynamic'")
    src, dst = Path(float_path).resolve(), Path(out_path).resolve()
    # ORT's quantizers run symbolic shape inference and may write external-data files
    # (``<uuid>.data``) and ``sym_shape_infer_temp.onnx`` into the working directory
    with tempfile.TemporaryDirectory() as work, contextlib.chdir(work):
        if mode == "dynamic":
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        else:
            _quantize_static(src, dst, calibration)
    return dst


def _quantize_static(src: Path, dst: Path, calibration: Sequence[dict]) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(calibration)

        def get_next(self):
            return next(self._it, None)

    quantize_static(str(src), str(dst), _Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)  # fmt: skip
