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

Graph outputs are left in float: a tensor that reaches a graph output directly or through
data-movement ops, pools and adds is never quantized, since a grid calibrated on sample inputs
would clamp a regression head, an embedding or any input beyond the calibration range to at most
256 values. ``quantize_outputs=True`` lifts this for ``Gemm`` outputs only (a classifier's
logits: ONNX Runtime then runs the last layer as ``QGemm`` with uint8 output, and out-of-range
logits clamp). Calibrated grids inside the graph (a residual branch before its add) clamp as
well, as in ONNX Runtime's own ``quantize_static``: on inputs far beyond the calibration range
the export departs from lowbit's model there (``requantize_conv_outputs=False`` avoids it).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from lowbit.export.float_gemm import float_gemm_biases_out, graph_index, is_dq

__all__ = ["requantize_conv_outputs"]

# ops that move data without changing values: a QuantizeLinear after them quantizes the conv
_PASS_THROUGH = {"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Relu"}
# ops ONNX Runtime runs on uint8 codes (QLinearAveragePool...) when their input and output are
# quantized; their outputs are quantized too, so the graph stays on integer codes through them
_POOLS = {"GlobalAveragePool", "AveragePool"}


def _downstream_quantizers(start: str, consumers) -> list:
    """The ``QuantizeLinear`` nodes ``start`` reaches through data-movement ops only."""
    found, tensors = [], [start]
    while tensors:
        for user in consumers.get(tensors.pop(), []):
            if user.op_type == "QuantizeLinear":
                found.append(user)
            elif user.op_type in _PASS_THROUGH:
                tensors.append(user.output[0])
    return found


def _output_sources(graph, producers) -> set[str]:
    """Tensors from which a graph output is reachable without passing a ``QuantizeLinear``.

    Quantizing any of these on a calibrated grid would clamp a model output where lowbit's
    PyTorch model does not: with ``conv → ReLU → GlobalAveragePool → Flatten`` as the output, a
    grid on the ReLU output clamps the averages; with ``cat([conv_a(x), conv_b(x)])`` or
    ``relu(x + conv(x))``, one on a conv output clamps the result. A path that meets a
    ``QuantizeLinear`` first is clamped there anyway, by lowbit's model too (the next layer's
    input grid), so the walk back from the outputs stops at those; every other op is followed
    through all its inputs, whatever it computes.
    """
    found, tensors = set(), [o.name for o in graph.output]
    while tensors:
        t = tensors.pop()
        found.add(t)
        node = producers.get(t)
        if node is not None and node.op_type != "QuantizeLinear":
            tensors.extend(i for i in node.input if i and i not in found)
    return found


def _is_target(node, producers, on_grid) -> bool:
    """Whether ONNX Runtime has an integer kernel for ``node`` once its output is quantized."""
    if node.op_type in ("Conv", "Gemm"):
        return all(is_dq(producers, i) for i in node.input[:2])
    if node.op_type == "Add":
        return all(i in on_grid for i in node.input)
    return node.op_type in _POOLS and node.input[0] in on_grid


def _targets(graph, quantize_outputs: bool = False):
    """Tensors to quantize: outputs of static QDQ convs and 2-D matmuls (``Gemm``), of ``Add``
    nodes whose two inputs are already on integer grids (residual connections) and of average
    pools of such tensors, each after a directly following ReLU.

    Returns ``{tensor: node name}`` to calibrate, ``{tensor: (scale, zero point, node)}`` for
    tensors that already reach ``QuantizeLinear`` nodes through max-pooling/reshaping (they get
    the grid of the first one: quantizing twice on one grid changes nothing), and
    ``{QuantizeLinear name: (scale, zero point)}``: the other quantizers of such a tensor, moved
    onto that same grid. One grid per tensor is what lets ONNX Runtime drop the
    ``DequantizeLinear → QuantizeLinear`` pairs between integer kernels; the consumers' grids were
    calibrated on the same tensor, so they differ little if at all.

    Tensors that are (copies of) graph outputs are skipped, except ``Gemm`` outputs when
    ``quantize_outputs`` (a classifier's logits as ``QGemm`` output).
    """
    producers, consumers = graph_index(graph)
    outputs = _output_sources(graph, producers)
    # tensors on an integer grid -> (scale, zero point) names, where the grid is known
    on_grid = {n.output[0]: tuple(n.input[1:3]) for n in graph.node
               if n.op_type == "DequantizeLinear"}  # fmt: skip
    calibrate, reuse, unify = {}, {}, {}
    for node in graph.node:  # the exporter writes nodes in topological order
        if node.op_type in _PASS_THROUGH and node.input and node.input[0] in on_grid:
            out, grid = node.output[0], on_grid[node.input[0]]
            on_grid[out] = grid
            read_as_float = any(u.op_type not in _PASS_THROUGH | {"QuantizeLinear"}
                                for u in consumers.get(out, []))  # fmt: skip
            if grid and read_as_float and out not in outputs:
                # quantized again on its input's grid (exact): e.g. a max-pool feeding both a
                # conv and a residual add runs on uint8 and the add becomes QLinearAdd
                reuse[out] = (*grid, node.name)
            continue
        if not _is_target(node, producers, on_grid):
            continue
        tensor = node.output[0]
        users = consumers.get(tensor, [])
        if len(users) == 1 and users[0].op_type == "Relu":
            tensor = users[0].output[0]  # ReLU + Q fold into QLinearConv (zero point 0)
        if tensor in outputs and not (quantize_outputs and node.op_type == "Gemm"):
            continue  # a calibrated grid would clamp the model's output
        quantizers = _downstream_quantizers(tensor, consumers)
        if not quantizers:
            calibrate[tensor] = node.name
            on_grid[tensor] = (f"{tensor}_requant_scale", f"{tensor}_requant_zp")
            continue
        grid = on_grid[tensor] = tuple(quantizers[0].input[1:3])
        for q in quantizers[1:]:
            if tuple(q.input[1:3]) != grid:
                unify[q.name or q.output[0]] = grid
        users = consumers.get(tensor, [])
        if not (len(users) == 1 and users[0].op_type == "QuantizeLinear"):
            reuse[tensor] = (*grid, node.name)
    return calibrate, reuse, unify


def _unify(graph, unify: dict[str, tuple[str, str]]) -> None:
    """Move each named ``QuantizeLinear``, and the ``DequantizeLinear`` nodes of its codes, onto
    the given grid."""
    _, readers = graph_index(graph)
    for q in graph.node:
        grid = unify.get(q.name or q.output[0]) if q.op_type == "QuantizeLinear" else None
        if grid is None:
            continue
        old = tuple(q.input[1:3])
        for node in [q, *readers[q.output[0]]]:
            if node is q or (node.op_type == "DequantizeLinear" and tuple(node.input[1:3]) == old):
                node.input[1], node.input[2] = grid


def _ranges(model, tensors: list[str], feeds: list[dict]) -> dict[str, tuple[float, float]]:
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for t in set(tensors) - {o.name for o in probe.graph.output}:
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


def requantize_conv_outputs(
    path: str, feeds: list[dict], quantize_outputs: bool = False
) -> list[str]:
    """Insert calibrated output Q/DQ pairs for static convs in the ONNX file at ``path``.

    ``quantize_outputs``: also quantize a ``Gemm`` output that is a graph output (classifiers
    only, see the module docstring). QDQ ``Gemm`` nodes whose output stays float then get
    their bias as a separate ``Add`` (:func:`~lowbit.export.float_gemm.float_gemm_biases_out`). Returns the node names
    (``/features.0/Conv``...) whose outputs were quantized.
    """
    import onnx

    model = onnx.load(path)
    calibrate, reuse, unify = _targets(model.graph, quantize_outputs)
    if calibrate or reuse or unify:
        ranges = _ranges(model, list(calibrate), feeds) if calibrate else {}
        _unify(model.graph, unify)
        _insert_qdq(model.graph, calibrate, reuse, ranges)
    moved = float_gemm_biases_out(model.graph)
    if calibrate or reuse or unify or moved:
        onnx.save(_toposorted(model), path)
    return sorted({*calibrate.values(), *(v[2] for v in reuse.values())})


def _insert_qdq(graph, calibrate: dict, reuse: dict, ranges: dict) -> None:
    """A ``QuantizeLinear → DequantizeLinear`` pair after each tensor to calibrate or reuse."""
    from onnx import helper, numpy_helper

    users = defaultdict(list)
    for n in graph.node:
        for k, i in enumerate(n.input):
            users[i].append((n, k))
    outputs = {o.name for o in graph.output}
    for t in [*calibrate, *reuse]:
        q_name, d_name, src = f"{t}_requant_q", f"{t}_requant_dq", t
        if t in reuse:
            s_name, z_name, _node = reuse[t]
        else:
            s_name, z_name = f"{t}_requant_scale", f"{t}_requant_zp"
            scale, zp = _qparams(*ranges[t])
            graph.initializer.extend(
                [numpy_helper.from_array(scale, s_name), numpy_helper.from_array(zp, z_name)]
            )
        if t in outputs:  # keep the output's name: the producer writes a renamed float tensor
            src, d_name = f"{t}_requant_float", t
            producer = next(n for n in graph.node if t in n.output)
            producer.output[list(producer.output).index(t)] = src
        for node, k in users[t]:
            node.input[k] = d_name
        graph.node.extend([
            helper.make_node("QuantizeLinear", [src, s_name, z_name], [q_name]),
            helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [d_name]),
        ])  # fmt: skip


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
