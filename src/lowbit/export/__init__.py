"""Exporters: lowbit's quantized models in formats other runtimes run (ONNX with QDQ)."""

from lowbit.export.onnx_export import OPSET, ExportError, OnnxExport, export_onnx

__all__ = ["export_onnx", "OnnxExport", "ExportError", "OPSET"]
