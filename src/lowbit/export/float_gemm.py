"""Float-output ``Gemm`` layers on ONNX Runtime's integer kernel: their bias after them.

A static lowbit Linear on 2-D inputs is exported as one ``Gemm`` on dequantized input and weight
(``DequantizeLinear`` → ``Gemm``). ONNX Runtime fuses that into ``QGemm`` when a
``QuantizeLinear`` reads the output, whatever the bias; when the output stays float (a model
output), only when the bias is absent or int32 (measured, ONNX Runtime 1.32). Moving the float
bias into an ``Add`` after the ``Gemm`` keeps the numbers, ``Gemm(A, B) + C = Gemm(A, B, C)``,
and the integer kernel.
"""

from __future__ import annotations

from collections import defaultdict

__all__ = ["float_gemm_biases_out", "graph_index", "is_dq"]


def graph_index(graph) -> tuple[dict, dict]:
    """``(producers, consumers)``: the node writing each tensor, the nodes reading it."""
    producers = {o: n for n in graph.node for o in n.output}
    consumers = defaultdict(list)
    for n in graph.node:
        for i in n.input:
            consumers[i].append(n)
    return producers, consumers


def is_dq(producers, name: str) -> bool:
    """Whether tensor ``name`` is written by a ``DequantizeLinear``."""
    node = producers.get(name)
    return node is not None and node.op_type == "DequantizeLinear"


def float_gemm_biases_out(graph) -> int:
    """Move the bias of each QDQ ``Gemm`` whose output stays float into an ``Add`` after it;
    returns how many.

    ONNX Runtime fuses a ``Gemm`` on dequantized inputs into ``QGemm`` with float output only
    when its bias is absent or int32 (measured, ORT 1.32: with a float bias it stays a float
    ``Gemm`` on dequantized weights). ``Gemm(A, B) + C`` computes the same numbers as
    ``Gemm(A, B, C)``; a ``MatMul`` + ``Add`` would not help: ONNX Runtime fuses it back into
    a ``Gemm``.
    """
    from onnx import helper  # optional dependency (lowbit[onnx])

    producers, consumers = graph_index(graph)
    moved = 0
    for node in list(graph.node):
        if len(node.input) < 3 or not node.input[2] or not _is_plain_qdq_gemm(node, producers):
            continue
        if _output_quantized(node.output[0], consumers):
            continue  # QGemm with uint8 output takes the float bias as it is
        out, bias = node.output[0], node.input[2]
        del node.input[2]
        node.output[0] = f"{out}_unbiased"
        scope = node.name.rsplit("/", 1)[0] if node.name else out
        add = helper.make_node("Add", [node.output[0], bias], [out], name=f"{scope}/BiasAdd")
        graph.node.insert(list(graph.node).index(node) + 1, add)
        moved += 1
    return moved


def _is_plain_qdq_gemm(node, producers) -> bool:
    """A ``Gemm`` computing ``A @ B + C`` (no transposes, unit alpha and beta) on dequantized
    ``A`` and ``B``, as the export twins write it."""
    if node.op_type != "Gemm" or not all(is_dq(producers, i) for i in node.input[:2]):
        return False
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    plain = {"transA": 0, "transB": 0, "alpha": 1.0, "beta": 1.0}
    return all(attrs.get(k, v) == v for k, v in plain.items())


def _output_quantized(tensor: str, consumers) -> bool:
    """Whether only ``QuantizeLinear`` nodes read ``tensor`` (after a directly following ReLU)."""
    users = consumers.get(tensor, [])
    if len(users) == 1 and users[0].op_type == "Relu":
        users = consumers.get(users[0].output[0], [])
    return bool(users) and all(u.op_type == "QuantizeLinear" for u in users)
