"""``lowbit.compile`` on ONNX runtimes: lowbit's own QDQ export, run in-process.

The model goes through :func:`lowbit.export_onnx` (integer weights as stored, calibrated
activation grids, float outputs) and then into ONNX Runtime or OpenVINO, which fuse the QDQ pairs
into their int8 kernels (``QLinearConv``, ``QGemm``, ``MatMulIntegerToFloat``...). Torch tensors go
in and come out; the exported file is cached by content (:mod:`lowbit.runtime.cache`).

>>> run = build_runner("onnxruntime", qmodel, sig, example, None, cache)  # doctest: +SKIP
>>> run([x])  # doctest: +SKIP
[tensor(...)]
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from lowbit.errors import BackendUnavailableError
from lowbit.runtime.cache import content_key
from lowbit.runtime.signature import FlatModule, Signature, as_inputs

__all__ = ["ONNX_BACKENDS", "runtime_missing", "build_runner", "export_cached", "calibration_tuples",
           "temp_folder"]

log = logging.getLogger(__name__)

# backend name -> the Python package it needs
ONNX_BACKENDS = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
Runner = Callable[[Sequence[torch.Tensor]], list[torch.Tensor]]


def runtime_missing(backend: str) -> str | None:
    """Why ``backend`` cannot run here (its package or ``onnx`` is not installed), or None."""
    for package in (ONNX_BACKENDS[backend], "onnx"):
        if importlib.util.find_spec(package) is None:
            return f"{backend} needs the {package!r} package (pip install {package})"
    return None


def _runtime_version(backend: str) -> str:
    module = __import__(ONNX_BACKENDS[backend])
    return f"{backend} {getattr(module, '__version__', '?')}"


def export_cached(
    model: nn.Module,
    sig: Signature,
    example: tuple[torch.Tensor, ...],
    calibration: list[tuple[torch.Tensor, ...]] | None,
    folder: Path,
) -> tuple[Path, bool]:
    """``(path, reused)``: ``model`` exported to ONNX in ``folder``, or the file exported before
    for the same content."""
    import onnx

    batches = calibration or [example]
    key = content_key(model, sig.digest(), batches, f"onnx {onnx.__version__}")
    path = folder / f"{key}.onnx"
    if path.exists():
        return path, True
    from lowbit.export import export_onnx

    with warnings.catch_warnings():
        # one example batch as calibration is the documented default of compile, said once there
        warnings.filterwarnings("ignore", message=".*calibration.*", category=UserWarning)
        export_onnx(FlatModule(model, sig), path, example, calibration=batches,
                    input_names=list(sig.names), output_names=sig.output_names,
                    dynamic_axes=sig.dynamic_axes())  # fmt: skip
    return path, False


def calibration_tuples(calibration, sig: Signature) -> list[tuple[torch.Tensor, ...]] | None:
    """Calibration batches (in the example's form) as tuples of tensors in signature order."""
    if calibration is None:
        return None
    out = []
    for batch in calibration:
        names, tensors, _ = as_inputs(batch)
        by_name = dict(zip(names, tensors, strict=True))
        out.append(tuple(by_name[n] for n in sig.names) if sig.keywords else tensors)
    return out


def build_runner(backend: str, path: Path, sig: Signature, cache: Path | None) -> Runner:
    """A callable running the ONNX file at ``path`` on ``backend``: tensors in, tensors out."""
    reason = runtime_missing(backend)
    if reason is not None:
        raise BackendUnavailableError(reason)
    if backend == "onnxruntime":
        return _ort_runner(path, sig)
    return _openvino_runner(path, sig, cache)


def _numpy(t: torch.Tensor):
    return t.detach().contiguous().numpy()


def _ort_runner(path: Path, sig: Signature) -> Runner:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def run(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        feeds = {n: _numpy(t) for n, t in zip(sig.names, tensors, strict=True)}
        return [torch.from_numpy(o) for o in sess.run(None, feeds)]

    return run


def _openvino_runner(path: Path, sig: Signature, cache: Path | None) -> Runner:
    import openvino as ov

    core = ov.Core()
    # f32 for the layers that stay float, as in lowbit's own runtime (OpenVINO would otherwise
    # run them in bf16 on CPUs with native bf16, a precision the user did not choose)
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if cache is not None:
        config["CACHE_DIR"] = str(cache / "openvino")
    compiled = core.compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    outputs = compiled.outputs

    def run(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        result = request.infer([_numpy(t) for t in tensors], share_inputs=True)
        return [torch.from_numpy(result[o]) for o in outputs]

    return run


def temp_folder() -> tempfile.TemporaryDirectory:
    """A folder for one uncached compile (``cache_dir=False``), removed with the compiled model."""
    return tempfile.TemporaryDirectory(prefix="lowbit-compile-")
