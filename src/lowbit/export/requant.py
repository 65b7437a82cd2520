"""Quantized outputs for static convolutions (and residual adds), so that ONNX Runtime runs
them as ``QLinearConv`` (and ``QLinearAdd``).

ONNX Runtime fuses ``DequantizeLinear → Conv → QuantizeLinear`` into ``QLinearConv``; a conv whose
output stays float runs as a float ``Conv`` on dequantized weights, slower than the float model
(measured in benchmarks/RESULTS.md). Where a conv's output (after a directly following ``Relu``)
does not already reach a ``QuantizeLinear`` through data-movement ops, this pass inserts a
``QuantizeLinear → DequantizeLinear`` pair there, with a uint8 range measured by running the
graph on calibration batches. The same holds for an ``Add`` whose two inputs are on integer grids
(a residual connection between quantized convs): with its output quantized it becomes
``QLinearAdd`` instead of dequantize, add, quantize. Ranges:
``s = (max(hi, 0) - min(lo, 0)) / 255``, ``z = round(-min(lo, 0) / s)``.

This adds one rounding that lowbit's PyTorch runtime does not have (its convs write float
outputs); the export's parity with lowbit's model is measured in the tests and the benchmark.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

__all__ = ["requantize_conv_outputs"]

# ops that move data without changing values: a QuantizeLinear after them quantizes the conv
_PASS_THROUGH = {"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Relu"}


def _is_dq(producers, name: str) -> bool:
    node = producers.get(name)
    return node is not None and node.op_type == "DequantizeLinear"


def _downstream_quantize(start: str, consumers):
    """The ``QuantizeLinear`` that ``start`` reaches through data-movement ops only, if any."""
    tensor = start
    while True:
        users = consumers.get(tensor, [])
        if len(users) != 1:
            return None
        if users[0].op_type == "QuantizeLinear":
            return users[0]
        if users[0].op_type not in _PASS_THROUGH:
            return None
        tensor = users[0].output[0]


def _targets(graph) -> tuple[dict[str, str], dict[str, tuple[str, str, str]]]:
    """Tensors to quantize: outputs of static QDQ convs, and of ``Add`` nodes whose two inputs
    are already on integer grids (residual connections), each after a directly following ReLU.

    Returns ``{tensor: node name}`` to calibrate, and ``{tensor: (scale, zero point, node)}`` for
    tensors that reach a ``QuantizeLinear`` through max-pooling/reshaping: they get that same
    grid (quantizing twice on one grid, with max-pool and reshapes between, changes nothing).
    Tensors already quantized right after the node are left alone.
    """
    producers = {o: n for n in graph.node for o in n.output}
    consumers = defaultdict(list)
    for n in graph.node:
        for i in n.input:
            consumers[i].append(n)
    outputs = {o.name for o in graph.output}
    on_grid = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    calibrate, reuse = {}, {}
    for node in graph.node:  # the exporter writes nodes in topological order
        if node.op_type in _PASS_THROUGH and node.input and node.input[0] in on_grid:
            on_grid.add(node.output[0])
            continue
        is_conv = node.op_type == "Conv" and all(_is_dq(producers, i) for i in node.input[:2])
        is_add = node.op_type == "Add" and all(i in on_grid for i in node.input)
        if not (is_conv or is_add):
            continue
        tensor = node.output[0]
        users = consumers.get(tensor, [])
        if len(users) == 1 and users[0].op_type == "Relu":
            tensor = users[0].output[0]  # ReLU + Q fold into QLinearConv (zero point 0)
        if tensor in outputs:
            continue
        on_grid.add(tensor)
        users = consumers.get(tensor, [])
        if len(users) == 1 and users[0].op_type == "QuantizeLinear":
            continue
        q = _downstream_quantize(tensor, consumers)
        if q is not None:
            reuse[tensor] = (q.input[1], q.input[2], node.name)
        else:
            calibrate[tensor] = node.name
    return calibrate, reuse


def _ranges(model, tensors: list[str], feeds: list[dict]) -> dict[str, tuple[float, float]]:
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for t in tensors:
        probe.graph.output.append(
            onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
        )
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    lo = dict.fromkeys(tensors, np.inf)
    hi = dict.fromkeys(tensors, -np.inf)
    for feed in feeds:
        for t, v in zip(tensors, sess.run(tensors, feed), strict=True):
            lo[t], hi[t] = min(lo[t], float(v.min())), max(hi[t], float(v.max()))
    return {t: (lo[t], hi[t]) for t in tensors}


def _qparams(lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / 255.0, 1e-12)
    zp = int(np.clip(np.round(-lo / scale), 0, 255))
    return np.array(scale, dtype=np.float32), np.array(zp, dtype=np.uint8)


def requantize_conv_outputs(path: str, feeds: list[dict]) -> list[str]:
    """Insert calibrated output Q/DQ pairs for static convs in the ONNX file at ``path``.

    Returns the conv node names (``/features.0/Conv``...) whose outputs were quantized.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(path)
    graph = model.graph
    calibrate, reuse = _targets(graph)
    if not calibrate and not reuse:
        return []
    ranges = _ranges(model, list(calibrate), feeds) if calibrate else {}
    users = defaultdict(list)
    for n in graph.node:
        for k, i in enumerate(n.input):
            users[i].append((n, k))
    for t in [*calibrate, *reuse]:
        q_name, d_name = f"{t}_requant_q", f"{t}_requant_dq"
        if t in reuse:
            s_name, z_name, _conv = reuse[t]
        else:
            s_name, z_name = f"{t}_requant_scale", f"{t}_requant_zp"
            scale, zp = _qparams(*ranges[t])
            graph.initializer.extend(
                [numpy_helper.from_array(scale, s_name), numpy_helper.from_array(zp, z_name)]
            )
        for node, k in users[t]:
            node.input[k] = d_name
        graph.node.extend([
            helper.make_node("QuantizeLinear", [t, s_name, z_name], [q_name]),
            helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [d_name]),
        ])  # fmt: skip
    onnx.save(_toposorted(model), path)
    return sorted([*calibrate.values(), *(v[2] for v in reuse.values())])


def _toposorted(model):
    """Nodes in an order where every input is produced before use (appended nodes moved up)."""
    graph = model.graph
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, order = list(graph.node), []
    while pending:
        rest = []
        for n in pending:
            (order if all(i in ready for i in n.input) else rest).append(n)
            if order and order[-1] is n:
                ready.update(n.output)
        if len(rest) == len(pending):
            raise ValueError("the ONNX graph has a cycle or an input that nothing produces")
        pending = rest
    del graph.node[:]
    graph.node.extend(order)
    return model
