"""4-bit weight tensors in the ONNX file: uint8 codes of 0..15 rewritten as ``UINT4``.

The TorchScript exporter writes opset 17 and has no 4-bit dtype, so the export twins hold 4-bit
codes and their zero points in uint8 tensors (:class:`~lowbit.export.onnx_ops.DequantizeCodes`,
exact at any opset). :func:`store_uint4` then stores them as ``TensorProto.UINT4``, two codes a
byte, first code in the low nibble, which ``DequantizeLinear`` reads from opset 21 on: the
model is first converted to opset 21 by ONNX's version converter, its IR version raised to 10.

>>> pack_uint4(np.array([1, 2, 3], dtype=np.uint8)).tolist()
[33, 3]
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["store_uint4", "pack_uint4", "OPSET_INT4"]

OPSET_INT4 = 21  # first opset whose DequantizeLinear reads 4-bit tensors
_IR_INT4 = 10  # first IR version with the INT4/UINT4 element types


def pack_uint4(codes: np.ndarray) -> np.ndarray:
    """Codes 0..15 two per byte, first code in the low nibble (ONNX's 4-bit layout)."""
    flat = codes.reshape(-1).astype(np.uint8)
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)


def _check_readers(graph, names: set[str]) -> None:
    """Every reader of ``names`` must be a ``DequantizeLinear`` taking both its codes and its
    zero point from them (a 4-bit tensor anywhere else would be a type error)."""
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name not in names:
                continue
            ok = (node.op_type == "DequantizeLinear" and k in (0, 2) and len(node.input) > 2
                  and node.input[0] in names and node.input[2] in names)  # fmt: skip
            if not ok:
                raise ValueError(
                    f"{name!r} is read by {node.op_type} {node.name!r}, not as the codes and "
                    "zero point of one DequantizeLinear"
                )


def _bypass_identities(graph) -> None:
    """Read initializers directly where the exporter put an ``Identity`` in between (it does
    so when it merges equal initializers: two layers whose zero points are all 8)."""
    inits = {i.name for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"
             and n.input[0] in inits and n.output[0] not in outputs}  # fmt: skip
    if not alias:
        return
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for node in kept:
        for k, name in enumerate(node.input):
            node.input[k] = alias.get(name, name)
    del graph.node[:]
    graph.node.extend(kept)


def _with_zero_points(graph, codes: list[str]) -> set[str]:
    """The code tensors that are in the graph and the zero points their dequantizers read
    (found through the graph: a merged initializer keeps only one of the twins' names)."""
    _bypass_identities(graph)
    present = set(codes) & {i.name for i in graph.initializer}
    if not present:
        raise ValueError(f"none of {sorted(codes)} is an initializer of the exported graph")
    zeros = {n.input[2] for n in graph.node if n.op_type == "DequantizeLinear"
             and n.input[0] in present and len(n.input) > 2}  # fmt: skip
    return present | zeros


def store_uint4(path: str | os.PathLike, codes: list[str]) -> None:
    """Rewrite the uint8 code initializers ``codes`` of the ONNX file at ``path``, and the zero
    points of the ``DequantizeLinear`` nodes that read them, as ``UINT4``.

    Raises ``ValueError`` when none is in the graph, one holds a value above 15, or one is read
    by anything but ``DequantizeLinear``; the file is then unchanged.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper, version_converter

    model = onnx.load(str(path))
    names = _with_zero_points(model.graph, codes)
    _check_readers(model.graph, names)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < OPSET_INT4:
        model = version_converter.convert_version(model, OPSET_INT4)
    model.ir_version = max(model.ir_version, _IR_INT4)
    for k, init in enumerate(model.graph.initializer):
        if init.name not in names:
            continue
        values = numpy_helper.to_array(init)
        if values.dtype != np.uint8 or (values.size and values.max() > 15):
            raise ValueError(f"{init.name!r} holds {values.dtype} values up to {values.max()}")
        packed = pack_uint4(values).tobytes()
        model.graph.initializer[k].CopyFrom(
            helper.make_tensor(init.name, TensorProto.UINT4, values.shape, packed, raw=True)
        )
    onnx.save(model, str(path))
